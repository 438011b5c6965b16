#!/usr/bin/env bash
# A USB webcam (V4L2) encoded to H.264 and streamed live.
# Needs: a camera at ${DEVICE:-/dev/video0}; x264enc (gstreamer1.0-plugins-ugly).
source "$(dirname "$0")/common.sh"
need_element v4l2src x264enc
run -e v4l2src device="${DEVICE:-/dev/video0}" do-timestamp=true ! videoconvert ! \
  x264enc tune=zerolatency speed-preset=veryfast key-int-max=60 bitrate=2000 ! \
  h264parse ! video/x-h264,stream-format=avc,alignment=au ! \
  kvssink stream-name="${STREAM:-webcam}" $KVS_PROPS
