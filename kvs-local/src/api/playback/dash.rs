//! The DASH manifest of a session (`/dash/v1/getDASHManifest.mpd`). Its init and media segments are the fMP4
//! fragments the HLS endpoints also serve (`getMP4InitFragment.mp4`, `getMP4MediaFragment.mp4`), under /dash/v1/.

use http::Response;

use super::hls::{first_header, format_time, response, window};
use super::session::{PlaybackMode, Session};
use crate::app::{App, now_ms};
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::fragment_id::fragment_number;
use crate::streams::StreamHandle;

/// Namespace of the `kvs:fn` and `kvs:ts` attributes (DisplayFragmentNumber / DisplayFragmentTimestamp).
pub const KVS_NAMESPACE: &str = "https://kinesisvideo.amazonaws.com/ns/2018";

fn duration(ms: u64) -> String {
    format!("PT{}.{:03}S", ms / 1000, ms % 1000)
}

pub async fn manifest(
    app: &App,
    stream: &StreamHandle,
    session: &Session,
    token: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let now = now_ms();
    let (meta, header) = first_header(app, stream, session).await?;
    let w = window(app, stream, session, now).await?;
    let codecs: Vec<String> = header
        .tracks
        .iter()
        .filter_map(|t| {
            let info = header.parsed.track(t.number)?;
            Some(
                t.codec
                    .rfc6381(info.codec_private.as_deref().unwrap_or_default()),
            )
        })
        .collect();
    let bandwidth = (meta.cluster_len * 8 * 1000)
        .checked_div(meta.duration_ms)
        .unwrap_or(1_000_000)
        .max(1);
    let mut size = String::new();
    if let Some(video) = header.parsed.track_list.first()
        && let (Some(width), Some(height)) = (video.pixel_width, video.pixel_height)
    {
        size = format!(" width=\"{width}\" height=\"{height}\"");
    }
    // The timeline is in milliseconds of producer time after the session base, as the fragments' tfdt are.
    let offset = |m: &crate::store::FragmentMeta| m.producer_ts_ms.saturating_sub(session.base_ms);
    let first_t = w.fragments.first().map_or(0, |(m, _)| offset(m));
    let total: u64 = w.fragments.iter().map(|(m, _)| m.duration_ms).sum();
    let mut timeline = String::new();
    let mut urls = String::new();
    for (i, (m, _)) in w.fragments.iter().enumerate() {
        // A fragment lasts until the next starts when that is sooner (its audio may reach past the next start):
        // the segment timeline must not overlap.
        let d = match w.fragments.get(i + 1) {
            Some((next, _)) if offset(next) > offset(m) => {
                m.duration_ms.min(offset(next) - offset(m))
            }
            _ => m.duration_ms,
        };
        let number = fragment_number(m.seq, m.server_ts_ms);
        let mut extra = String::new();
        if session.display_number {
            extra.push_str(&format!(" kvs:fn=\"{number}\""));
        }
        if session.display_timestamp {
            extra.push_str(&format!(
                " kvs:ts=\"{}\"",
                format_time(session.kind().of(m))
            ));
        }
        timeline.push_str(&format!(
            "          <S t=\"{}\" d=\"{}\"{extra}/>\n",
            offset(m),
            d
        ));
        urls.push_str(&format!(
            "        <SegmentURL media=\"getMP4MediaFragment.mp4?FragmentNumber={number}&amp;SessionToken={token}\"/>\n"
        ));
    }
    let timing = if session.mode == PlaybackMode::OnDemand || w.ended {
        format!(
            "type=\"static\" mediaPresentationDuration=\"{}\"",
            duration(total)
        )
    } else {
        format!(
            "type=\"dynamic\" availabilityStartTime=\"{}\" publishTime=\"{}\" minimumUpdatePeriod=\"PT1S\" \
             timeShiftBufferDepth=\"{}\" suggestedPresentationDelay=\"PT3S\"",
            format_time(session.created_ms),
            format_time(now),
            duration(total.max(1000))
        )
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" xmlns:kvs=\"{KVS_NAMESPACE}\" \
         profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" minBufferTime=\"PT2S\" {timing}>\n\
         \x20 <Period id=\"0\" start=\"PT0S\">\n\
         \x20   <AdaptationSet mimeType=\"video/mp4\" segmentAlignment=\"true\" startWithSAP=\"1\">\n\
         \x20     <Representation id=\"0\" codecs=\"{}\" bandwidth=\"{bandwidth}\"{size}>\n\
         \x20       <SegmentList timescale=\"1000\" presentationTimeOffset=\"{first_t}\">\n\
         \x20         <Initialization sourceURL=\"getMP4InitFragment.mp4?SessionToken={token}\"/>\n\
         \x20         <SegmentTimeline>\n{timeline}\x20         </SegmentTimeline>\n{urls}\
         \x20       </SegmentList>\n\
         \x20     </Representation>\n\
         \x20   </AdaptationSet>\n\
         \x20 </Period>\n\
         </MPD>\n",
        codecs.join(",")
    );
    Ok(response(body, "application/dash+xml"))
}
