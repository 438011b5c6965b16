#!/usr/bin/env bash
# An RTSP camera's H.264 passed through without re-encoding.
# Needs: RTSP_URL (e.g. rtsp://user:pass@192.168.1.20/stream1); rtspsrc (gstreamer1.0-plugins-good).
source "$(dirname "$0")/common.sh"
need_element rtspsrc rtph264depay h264parse
: "${RTSP_URL:?set RTSP_URL to the camera's rtsp:// address}"
run -e rtspsrc location="$RTSP_URL" protocols=tcp latency=200 ! rtph264depay ! h264parse config-interval=-1 ! \
  video/x-h264,stream-format=avc,alignment=au ! \
  kvssink stream-name="${STREAM:-rtsp-camera}" $KVS_PROPS
