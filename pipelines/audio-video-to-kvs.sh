#!/usr/bin/env bash
# A test camera with sound: H.264 video and AAC audio in one stream.
# Needs: x264enc (plugins-ugly), voaacenc (plugins-bad). Stops after ${SECONDS_TO_STREAM:-30} s.
source "$(dirname "$0")/common.sh"
need_element x264enc voaacenc
n=$(( ${SECONDS_TO_STREAM:-30} * 30 ))
a=$(( ${SECONDS_TO_STREAM:-30} * 48000 / 1024 ))
run -e kvssink name=sink stream-name="${STREAM:-audio-video}" $KVS_PROPS \
  videotestsrc is-live=true num-buffers=$n ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 ! \
  x264enc tune=zerolatency key-int-max=60 bitrate=2000 ! h264parse ! \
  video/x-h264,stream-format=avc,alignment=au ! queue ! sink.video_0 \
  audiotestsrc is-live=true num-buffers=$a samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 ! \
  voaacenc bitrate=96000 ! aacparse ! audio/mpeg,mpegversion=4,stream-format=raw ! queue ! sink.audio_0
