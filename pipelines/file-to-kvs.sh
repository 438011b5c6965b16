#!/usr/bin/env bash
# A recorded MP4/MKV file (H.264 video) uploaded as fast as the service accepts it: offline streaming applies
# backpressure instead of dropping, and file-start-time stamps the fragments with when the recording began.
# Needs: FILE; START (epoch seconds of the recording's start, default: now).
source "$(dirname "$0")/common.sh"
need_element parsebin h264parse
: "${FILE:?set FILE to the recording to upload}"
run -e filesrc location="$FILE" ! parsebin ! h264parse ! video/x-h264,stream-format=avc,alignment=au ! \
  kvssink stream-name="${STREAM:-recording}" streaming-type=offline \
  file-start-time="${START:-$(date +%s)}" $KVS_PROPS
