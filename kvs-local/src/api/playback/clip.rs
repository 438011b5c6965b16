//! GetClip: an MP4 (moov first) of the fragments in a producer or server timestamp range, at most the first 200
//! fragments or 100 MB of media from the start of the range (seed 004).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response};

use super::{
    Header, archived_stream, fragments_in, headers_of, parse_selector, remux_error, retime_cluster,
};
use crate::api::Input;
use crate::app::App;
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::remux::{self, Container};
use crate::store::FragmentMeta;

/// Most fragments in one clip.
pub const MAX_CLIP_FRAGMENTS: usize = 200;
/// Most media bytes (stored clusters) in one clip.
pub const MAX_CLIP_BYTES: u64 = 100 * 1024 * 1024;

/// The fragments a clip holds: from the start of `found`, while they share the first one's media (a new session
/// with other codec data would need another moov), up to the fragment and byte limits.
fn clip_fragments<'a>(
    found: &'a [FragmentMeta],
    headers: &'a std::collections::HashMap<u64, Header>,
) -> Result<(&'a Header, &'a [FragmentMeta]), ApiError> {
    let first = found
        .first()
        .ok_or_else(|| ApiError::internal("no fragment to clip"))?;
    let header = headers
        .get(&first.header_id)
        .ok_or_else(|| ApiError::internal("a fragment's stream header is missing"))?;
    let mut bytes = 0u64;
    let mut n = 0;
    for m in found.iter().take(MAX_CLIP_FRAGMENTS) {
        let same = m.header_id == first.header_id
            || headers
                .get(&m.header_id)
                .is_some_and(|h| h.same_media(header));
        if !same || (n > 0 && bytes + m.cluster_len > MAX_CLIP_BYTES) {
            break;
        }
        bytes += m.cluster_len;
        n += 1;
    }
    Ok((header, &found[..n]))
}

pub async fn get_clip(app: Arc<App>, input: Input) -> Result<Response<ResponseBody>, ApiError> {
    let range = parse_selector(&input, "ClipFragmentSelector")?;
    let stream = archived_stream(&app, &input)?;
    let found = fragments_in(&app, &stream, range).await?;
    if found.is_empty() {
        return Err(ApiError::not_found(format!(
            "stream '{}' has no fragments in the requested time range",
            stream.record().name
        )));
    }
    // Only the headers of the fragments that can be in the clip matter.
    let candidates = &found[..found.len().min(MAX_CLIP_FRAGMENTS)];
    let headers = headers_of(&app, &stream, candidates).await?;
    let (header, selected) = clip_fragments(candidates, &headers)?;
    let header = header.clone();
    let selected = selected.to_vec();
    let id = stream.id;
    let stored = app
        .blocking(move |s| {
            selected
                .into_iter()
                .map(|m| Ok((m, s.read_fragment(id, &m)?)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let mp4 = tokio::task::spawn_blocking(move || build_clip(&header, &stored))
        .await
        .map_err(|e| ApiError::internal(format!("the clip task failed: {e}")))??;
    let mut r = Response::new(ResponseBody::full(mp4));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("video/mp4"),
    );
    Ok(r)
}

/// The MP4 of these fragments, their clusters re-timed so that the clip starts at 0 and never goes back in time
/// (a producer that restarted its timecodes in a new session still gives a playable clip).
fn build_clip(header: &Header, stored: &[(FragmentMeta, Bytes)]) -> Result<Vec<u8>, ApiError> {
    let scale = header.parsed.timecode_scale.max(1);
    let to_units = |ms: u64| (ms as u128 * 1_000_000 / scale as u128) as u64;
    let base = stored.first().map_or(0, |(m, _)| m.producer_ts_ms);
    let mut input = Vec::with_capacity(stored.len() + 1);
    input.push(header.raw.clone());
    let mut next_min = 0u64;
    for (m, data) in stored {
        let offset = m.producer_ts_ms.saturating_sub(base).max(next_min);
        next_min = offset + m.duration_ms;
        input.push(Bytes::from(retime_cluster(
            data,
            m.cluster_len,
            to_units(offset),
        )?));
    }
    remux::convert(input, &header.tracks, Container::Mp4).map_err(remux_error)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kvs_mkv::ebml::{self, id};

    use super::*;
    use crate::api::playback::parse_header;

    fn header(private: &[u8]) -> Header {
        let mut raw = kvs_mkv::writer::ebml_header("matroska");
        raw.extend_from_slice(&kvs_mkv::writer::segment_start_unknown());
        let mut info = Vec::new();
        ebml::write_uint_element(&mut info, id::TIMECODE_SCALE, 1_000_000);
        ebml::write_master_element(&mut raw, id::INFO, &info);
        let mut entry = Vec::new();
        ebml::write_uint_element(&mut entry, id::TRACK_NUMBER, 1);
        ebml::write_uint_element(&mut entry, id::TRACK_TYPE, 1);
        ebml::write_str_element(&mut entry, id::CODEC_ID, "V_MPEG4/ISO/AVC");
        ebml::write_binary_element(&mut entry, id::CODEC_PRIVATE, private);
        let mut tracks = Vec::new();
        ebml::write_master_element(&mut tracks, id::TRACK_ENTRY, &entry);
        ebml::write_master_element(&mut raw, id::TRACKS, &tracks);
        parse_header(Bytes::from(raw)).unwrap()
    }

    fn meta(seq: u64, header_id: u64, cluster_len: u64) -> FragmentMeta {
        FragmentMeta {
            seq,
            server_ts_ms: 1000 + seq,
            producer_ts_ms: 1000 + seq,
            duration_ms: 1000,
            timecode: seq,
            header_id,
            segment: 0,
            offset: 0,
            cluster_len,
            tags_len: 0,
        }
    }

    #[test]
    fn clips_stop_at_200_fragments_100_mb_and_other_codec_data() {
        let a = header(&[1, 0x42, 0, 0x1e, 0xff, 0xe1, 0]);
        let a_again = header(&[1, 0x42, 0, 0x1e, 0xff, 0xe1, 0]);
        let b = header(&[1, 0x64, 0, 0x28, 0xff, 0xe1, 0]);
        let headers: HashMap<u64, Header> = [(1, a), (2, a_again), (3, b)].into_iter().collect();

        let many: Vec<FragmentMeta> = (0..250).map(|i| meta(i, 1, 1000)).collect();
        assert_eq!(clip_fragments(&many, &headers).unwrap().1.len(), 200);

        let big = [meta(0, 1, 60 << 20), meta(1, 1, 40 << 20), meta(2, 1, 1)];
        assert_eq!(
            clip_fragments(&big, &headers).unwrap().1.len(),
            2,
            "exactly 100 MiB fits"
        );
        let huge = [meta(0, 1, 200 << 20), meta(1, 1, 1)];
        assert_eq!(
            clip_fragments(&huge, &headers).unwrap().1.len(),
            1,
            "the first fragment always goes in"
        );

        // A new session with the same codec data continues the clip; other codec data ends it.
        let sessions = [
            meta(0, 1, 10),
            meta(1, 2, 10),
            meta(2, 3, 10),
            meta(3, 1, 10),
        ];
        assert_eq!(clip_fragments(&sessions, &headers).unwrap().1.len(), 2);
    }
}
