//! The HLS endpoints a session URL leads to: master playlist, media playlist, fMP4 init and media fragments and
//! MPEG-TS fragments. They are GET requests authorized by the session token in the query, as in the service.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, Uri};

use super::session::{
    Discontinuity, Packaging, PlaybackMode, Session, decode_token, not_authorized,
};
use super::{
    Header, TimestampKind, all_fragments, fragments_in, parse_header, read_fragment, remux_error,
    retime_cluster,
};
use crate::app::{App, now_ms};
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::fragment_id::{self, fragment_number};
use crate::remux::{self, Container};
use crate::store::FragmentMeta;
use crate::streams::StreamHandle;

/// Path prefix of the HLS endpoints.
pub const PREFIX: &str = "/hls/v1/";
/// Path prefix of the DASH endpoints (the manifest is in `dash`, the fragments are the same as HLS fMP4).
pub const DASH_PREFIX: &str = "/dash/v1/";

/// Gaps or overlaps above this between fragments are discontinuities (DiscontinuityMode ON_DISCONTINUITY).
const DISCONTINUITY_MS: u64 = 50;

/// Whether a request path is one of the session endpoints served here.
pub fn is_session_path(path: &str) -> bool {
    path.starts_with(PREFIX) || path.starts_with(DASH_PREFIX)
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn response(body: impl Into<Bytes>, content_type: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body.into()));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    // Players on other origins (the viewer page, hls.js elsewhere) read these.
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// Serves a GET on an HLS endpoint.
pub async fn serve(
    app: Arc<App>,
    method: &Method,
    uri: &Uri,
) -> Result<Response<ResponseBody>, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::unknown_operation(format!(
            "{method} {} is not served: HLS endpoints take GET",
            uri.path()
        )));
    }
    let token = query_param(uri, "SessionToken").ok_or_else(|| {
        ApiError::invalid_argument("the SessionToken query parameter is required")
    })?;
    let session = decode_token(token, now_ms())?;
    let stream = app
        .registry
        .get(&session.stream_name)
        .filter(|s| s.id == session.stream_id && !s.is_deleted())
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "the session's stream '{}' no longer exists",
                session.stream_name
            ))
        })?;
    let dash_path = uri.path().starts_with(DASH_PREFIX);
    if dash_path != session.dash {
        return Err(not_authorized(format!(
            "the SessionToken is for a{} session",
            if session.dash { " DASH" } else { "n HLS" }
        )));
    }
    let name = uri
        .path()
        .strip_prefix(if dash_path { DASH_PREFIX } else { PREFIX })
        .unwrap_or_default();
    match (name, session.packaging) {
        ("getDASHManifest.mpd", _) if dash_path => {
            super::dash::manifest(&app, &stream, &session, token).await
        }
        ("getHLSMasterPlaylist.m3u8" | "getHLSMediaPlaylist.m3u8" | "getTSFragment.ts", _)
            if dash_path =>
        {
            Err(ApiError::unknown_operation(format!(
                "no DASH endpoint is served at '{}'",
                uri.path()
            )))
        }
        ("getHLSMasterPlaylist.m3u8", _) => master_playlist(&app, &stream, &session, token).await,
        ("getHLSMediaPlaylist.m3u8", _) => media_playlist(&app, &stream, &session, token).await,
        ("getMP4InitFragment.mp4", Packaging::FragmentedMp4) => {
            init_fragment(&app, &stream, &session).await
        }
        ("getMP4MediaFragment.mp4", Packaging::FragmentedMp4) => {
            let meta = requested_fragment(&app, &stream, &session, uri).await?;
            media_fragment(&app, &stream, &session, meta, Packaging::FragmentedMp4).await
        }
        ("getTSFragment.ts", Packaging::MpegTs) => {
            let meta = requested_fragment(&app, &stream, &session, uri).await?;
            media_fragment(&app, &stream, &session, meta, Packaging::MpegTs).await
        }
        ("getMP4InitFragment.mp4" | "getMP4MediaFragment.mp4" | "getTSFragment.ts", packaging) => {
            Err(ApiError::invalid_argument(format!(
                "{name} is not part of a session with ContainerFormat {}",
                match packaging {
                    Packaging::FragmentedMp4 => "FRAGMENTED_MP4",
                    Packaging::MpegTs => "MPEG_TS",
                }
            )))
        }
        _ => Err(ApiError::unknown_operation(format!(
            "no HLS endpoint is served at '{}'",
            uri.path()
        ))),
    }
}

/// The fragments a media playlist lists now, with whether a discontinuity precedes each.
#[derive(Debug, Default)]
pub struct Window {
    pub fragments: Vec<(FragmentMeta, bool)>,
    pub discontinuity_sequence: u64,
    pub ended: bool,
}

/// What the session shows at `now`.
pub async fn window(
    app: &App,
    stream: &StreamHandle,
    session: &Session,
    now: u64,
) -> Result<Window, ApiError> {
    let kind = session.kind();
    let mut all = match session.range() {
        Some(r) => fragments_in(app, stream, r).await?,
        None => all_fragments(app, stream).await?,
    };
    if kind == TimestampKind::Producer {
        // Several fragments with one producer timestamp: the newest (largest number) is the one played.
        all.sort_by_key(|m| (m.producer_ts_ms, std::cmp::Reverse(m.seq)));
        all.dedup_by_key(|m| m.producer_ts_ms);
    }
    let marks: Vec<bool> = all
        .iter()
        .enumerate()
        .map(|(i, m)| match (session.discontinuity, i) {
            (_, 0) | (Discontinuity::Never, _) => false,
            (Discontinuity::Always, _) => true,
            (Discontinuity::OnDiscontinuity, _) => {
                let prev = &all[i - 1];
                let expected = kind.of(prev) + prev.duration_ms;
                kind.of(m).abs_diff(expected) > DISCONTINUITY_MS
            }
        })
        .collect();
    let max = session.max_fragments as usize;
    let (from, to, ended) = match session.mode {
        PlaybackMode::OnDemand => (0, all.len().min(max), true),
        PlaybackMode::Live => (all.len().saturating_sub(max), all.len(), false),
        PlaybackMode::LiveReplay => {
            // A fragment appears once the fragments before it have had time to play.
            let elapsed = now.saturating_sub(session.created_ms);
            let mut shown = 0;
            let mut played = 0u64;
            for m in &all {
                if shown > 0 && played > elapsed {
                    break;
                }
                played += m.duration_ms;
                shown += 1;
            }
            let ended = session.end_ms.is_some() && shown == all.len();
            (shown.saturating_sub(max), shown, ended)
        }
    };
    let discontinuity_sequence = marks[..from].iter().filter(|m| **m).count() as u64;
    Ok(Window {
        fragments: all[from..to]
            .iter()
            .zip(&marks[from..to])
            .enumerate()
            .map(|(i, (m, d))| (*m, *d && i > 0))
            .collect(),
        discontinuity_sequence,
        ended,
    })
}

pub async fn first_header(
    app: &App,
    stream: &StreamHandle,
    session: &Session,
) -> Result<(FragmentMeta, Header), ApiError> {
    let w = window(app, stream, session, now_ms()).await?;
    let Some((meta, _)) = w.fragments.first() else {
        return Err(ApiError::not_found(format!(
            "stream '{}' has no fragments for this session",
            session.stream_name
        )));
    };
    let (header, _) = read_fragment(app, stream, *meta).await?;
    Ok((*meta, parse_header(header)?))
}

async fn master_playlist(
    app: &App,
    stream: &StreamHandle,
    session: &Session,
    token: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let (meta, header) = first_header(app, stream, session).await?;
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
    let mut inf = format!("BANDWIDTH={bandwidth},CODECS=\"{}\"", codecs.join(","));
    if let Some(video) = header.parsed.track_list.first()
        && let (Some(w), Some(h)) = (video.pixel_width, video.pixel_height)
    {
        inf.push_str(&format!(",RESOLUTION={w}x{h}"));
    }
    let version = version(session);
    let body = format!(
        "#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:{inf}\n\
         getHLSMediaPlaylist.m3u8?SessionToken={token}\n"
    );
    Ok(response(body, "application/vnd.apple.mpegurl"))
}

fn version(session: &Session) -> u32 {
    match session.packaging {
        // EXT-X-MAP for fMP4 needs version 6 or later.
        Packaging::FragmentedMp4 => 7,
        Packaging::MpegTs => 3,
    }
}

pub fn format_time(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

async fn media_playlist(
    app: &App,
    stream: &StreamHandle,
    session: &Session,
    token: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let w = window(app, stream, session, now_ms()).await?;
    let target = w
        .fragments
        .iter()
        .map(|(m, _)| m.duration_ms.div_ceil(1000))
        .max()
        .unwrap_or(1)
        .max(1);
    let sequence = w.fragments.first().map_or(0, |(m, _)| m.seq);
    let mut out = format!(
        "#EXTM3U\n#EXT-X-VERSION:{}\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n\
         #EXT-X-DISCONTINUITY-SEQUENCE:{}\n",
        version(session),
        w.discontinuity_sequence
    );
    if session.mode == PlaybackMode::OnDemand {
        out.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    }
    if session.packaging == Packaging::FragmentedMp4 {
        out.push_str(&format!(
            "#EXT-X-MAP:URI=\"getMP4InitFragment.mp4?SessionToken={token}\"\n"
        ));
    }
    let (path, _) = fragment_path(session.packaging);
    for (m, discontinuity) in &w.fragments {
        if *discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if session.display_timestamp {
            out.push_str(&format!(
                "#EXT-X-PROGRAM-DATE-TIME:{}\n",
                format_time(session.kind().of(m))
            ));
        }
        out.push_str(&format!(
            "#EXTINF:{:.3},\n{path}?FragmentNumber={}&SessionToken={token}\n",
            m.duration_ms as f64 / 1000.0,
            fragment_number(m.seq, m.server_ts_ms)
        ));
    }
    if w.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    Ok(response(out, "application/vnd.apple.mpegurl"))
}

fn fragment_path(p: Packaging) -> (&'static str, &'static str) {
    match p {
        Packaging::FragmentedMp4 => ("getMP4MediaFragment.mp4", "video/mp4"),
        Packaging::MpegTs => ("getTSFragment.ts", "video/mp2t"),
    }
}

async fn requested_fragment(
    app: &App,
    stream: &StreamHandle,
    session: &Session,
    uri: &Uri,
) -> Result<FragmentMeta, ApiError> {
    let number = query_param(uri, "FragmentNumber").ok_or_else(|| {
        ApiError::invalid_argument("the FragmentNumber query parameter is required")
    })?;
    let missing = || ApiError::not_found(format!("fragment {number} is not part of this session"));
    let (seq, _) = fragment_id::decode(number).ok_or_else(missing)?;
    let meta = match stream.live_get(seq) {
        Some(f) => Some(f.meta),
        None => {
            let id = stream.id;
            app.blocking(move |s| s.fragment(id, seq)).await?
        }
    };
    let meta = meta
        .filter(|m| fragment_number(m.seq, m.server_ts_ms) == number)
        .filter(|m| session.range().is_none_or(|r| r.contains(m)))
        .ok_or_else(missing)?;
    Ok(meta)
}

/// Converts one fragment, placed on the session's timeline.
async fn convert(
    app: &App,
    stream: &StreamHandle,
    session: &Session,
    meta: FragmentMeta,
    container: Container,
) -> Result<(Vec<u8>, u64), ApiError> {
    let (header, data) = read_fragment(app, stream, meta).await?;
    let header = parse_header(header)?;
    let offset_ms = meta.producer_ts_ms.saturating_sub(session.base_ms);
    let units = (u128::from(offset_ms) * 1_000_000
        / u128::from(header.parsed.timecode_scale.max(1))) as u64;
    let cluster = retime_cluster(&data, meta.cluster_len, units)?;
    let out = tokio::task::spawn_blocking(move || {
        remux::convert(
            vec![header.raw.clone(), Bytes::from(cluster)],
            &header.tracks,
            container,
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("the conversion task failed: {e}")))?
    .map_err(remux_error)?;
    Ok((out, offset_ms))
}

async fn init_fragment(
    app: &App,
    stream: &StreamHandle,
    session: &Session,
) -> Result<Response<ResponseBody>, ApiError> {
    let (meta, _) = first_header(app, stream, session).await?;
    let (out, _) = convert(app, stream, session, meta, Container::FragmentedMp4).await?;
    let parts = remux::split_fmp4(&out).map_err(remux_error)?;
    Ok(response(parts.init, "video/mp4"))
}

async fn media_fragment(
    app: &App,
    stream: &StreamHandle,
    session: &Session,
    meta: FragmentMeta,
    packaging: Packaging,
) -> Result<Response<ResponseBody>, ApiError> {
    let (_, content_type) = fragment_path(packaging);
    match packaging {
        Packaging::FragmentedMp4 => {
            let (out, offset_ms) =
                convert(app, stream, session, meta, Container::FragmentedMp4).await?;
            let parts = remux::split_fmp4(&out).map_err(remux_error)?;
            let mut media = parts.media;
            remux::shift_fmp4(&mut media, &parts.timescales, offset_ms).map_err(remux_error)?;
            Ok(response(media, content_type))
        }
        Packaging::MpegTs => {
            let (out, _) = convert(app, stream, session, meta, Container::MpegTs).await?;
            Ok(response(out, content_type))
        }
    }
}
