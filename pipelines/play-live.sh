#!/usr/bin/env bash
# Live playback of a stream on the screen, resuming by itself after network cuts.
# Needs: a display; avdec_h264 (gstreamer1.0-libav).
source "$(dirname "$0")/common.sh"
need_element decodebin autovideosink
run kvssrc stream-name="${STREAM:-webcam}" start-selector=now $KVS_PROPS ! \
  decodebin ! videoconvert ! autovideosink sync=false
