//! Streaming sessions: the token in HLS URLs, and GetHLSStreamingSessionURL.
//!
//! A session is not stored: its parameters travel in the token, base64url JSON followed by an HMAC-SHA256 of it
//! under a key made when the server starts. A token is accepted until its expiry, by this server process only
//! (a restarted server gives new sessions, as a player would get after a service-side expiry).

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use super::{TimeRange, TimestampKind, archived_stream, fragments_in, headers_of, parse_selector};
use crate::api::input::constraint;
use crate::api::{Input, json_response};
use crate::app::{App, now_ms};
use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::remux::Codec;

/// How long after the newest fragment a LIVE session can still start (seed 003: "the last 30 seconds").
pub const LIVE_WINDOW_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlaybackMode {
    Live,
    LiveReplay,
    OnDemand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Discontinuity {
    Always,
    Never,
    OnDiscontinuity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Packaging {
    FragmentedMp4,
    MpegTs,
}

/// Everything a session's URLs need, carried in its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Stream id (a stream deleted and created again under the same name is another stream).
    pub stream_id: u64,
    pub stream_name: String,
    pub mode: PlaybackMode,
    pub producer_ts: bool,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub packaging: Packaging,
    pub discontinuity: Discontinuity,
    pub display_timestamp: bool,
    pub max_fragments: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Producer time that is 0 on the session's media timeline.
    pub base_ms: u64,
    /// A DASH session (served under /dash/v1/) rather than HLS.
    #[serde(default)]
    pub dash: bool,
    /// DASH DisplayFragmentNumber ALWAYS: `kvs:fn` on each S element.
    #[serde(default)]
    pub display_number: bool,
}

impl Session {
    pub fn kind(&self) -> TimestampKind {
        if self.producer_ts {
            TimestampKind::Producer
        } else {
            TimestampKind::Server
        }
    }

    pub fn range(&self) -> Option<TimeRange> {
        Some(TimeRange {
            kind: self.kind(),
            start_ms: self.start_ms?,
            end_ms: self.end_ms.unwrap_or(u64::MAX),
        })
    }
}

fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

fn mac(payload: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = match Hmac::<Sha256>::new_from_slice(key()) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(payload);
    m.finalize().into_bytes().to_vec()
}

/// The token of a session.
pub fn encode_token(s: &Session) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(s).unwrap_or_default());
    let sig = URL_SAFE_NO_PAD.encode(mac(payload.as_bytes()));
    format!("{payload}.{sig}")
}

pub fn not_authorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "NotAuthorizedException", message)
}

/// The session of a token, if this server issued it and it has not expired.
pub fn decode_token(token: &str, now: u64) -> Result<Session, ApiError> {
    let (payload, sig) = token
        .split_once('.')
        .ok_or_else(|| not_authorized("the SessionToken is malformed"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| not_authorized("the SessionToken is malformed"))?;
    let mut m = Hmac::<Sha256>::new_from_slice(key())
        .map_err(|_| ApiError::internal("the session key is unusable"))?;
    m.update(payload.as_bytes());
    m.verify_slice(&sig)
        .map_err(|_| not_authorized("the SessionToken was not issued by this server"))?;
    let session: Session = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| not_authorized("the SessionToken is malformed"))?;
    if now >= session.expires_ms {
        return Err(not_authorized(format!(
            "the session expired {} s ago",
            (now - session.expires_ms) / 1000
        )));
    }
    Ok(session)
}

fn enum_member<'a>(
    input: &'a Input,
    name: &str,
    allowed: &[&str],
) -> Result<Option<&'a str>, ApiError> {
    match input.opt_str(name)? {
        Some(v) if !allowed.contains(&v) => Err(constraint(
            name,
            v,
            &format!(
                "Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            ),
        )),
        other => Ok(other),
    }
}

/// The checked parameters of GetHLSStreamingSessionURL / GetDASHStreamingSessionURL.
pub async fn create_session(
    app: &App,
    input: &Input,
    selector_member: &str,
    max_member: &str,
    packaging: Packaging,
) -> Result<Session, ApiError> {
    let mode = match enum_member(input, "PlaybackMode", &["LIVE", "LIVE_REPLAY", "ON_DEMAND"])? {
        None | Some("LIVE") => PlaybackMode::Live,
        Some("LIVE_REPLAY") => PlaybackMode::LiveReplay,
        _ => PlaybackMode::OnDemand,
    };
    let expires_s = input.opt_int_range("Expires", 300, 43_200)?.unwrap_or(300) as u64;
    let max_default = if mode == PlaybackMode::OnDemand {
        1000
    } else {
        5
    };
    let max_fragments = input
        .opt_int_range(max_member, 1, 5000)?
        .unwrap_or(max_default) as u64;
    let (producer_ts, range) = match mode {
        PlaybackMode::Live => {
            let producer = match input.opt_object(selector_member)? {
                Some(sel) => {
                    if sel.has("TimestampRange") {
                        return Err(ApiError::invalid_argument(format!(
                            "{selector_member}.TimestampRange must not be set when PlaybackMode is LIVE"
                        )));
                    }
                    match sel.opt_str("FragmentSelectorType")? {
                        None | Some("SERVER_TIMESTAMP") => false,
                        Some("PRODUCER_TIMESTAMP") => true,
                        Some(other) => {
                            return Err(constraint(
                                &format!("{selector_member}.FragmentSelectorType"),
                                other,
                                "Member must satisfy enum value set: [PRODUCER_TIMESTAMP, SERVER_TIMESTAMP]",
                            ));
                        }
                    }
                }
                None => false,
            };
            (producer, None)
        }
        PlaybackMode::LiveReplay | PlaybackMode::OnDemand => {
            if !input.has(selector_member) {
                return Err(ApiError::invalid_argument(format!(
                    "{selector_member} is required when PlaybackMode is ON_DEMAND or LIVE_REPLAY"
                )));
            }
            let r = lenient_selector(input, selector_member, mode)?;
            (r.kind == TimestampKind::Producer, Some(r))
        }
    };
    let discontinuity = match enum_member(
        input,
        "DiscontinuityMode",
        &["ALWAYS", "NEVER", "ON_DISCONTINUITY"],
    )? {
        Some("ALWAYS") => Discontinuity::Always,
        Some("NEVER") => Discontinuity::Never,
        Some(_) => Discontinuity::OnDiscontinuity,
        None if producer_ts => Discontinuity::Never,
        None => Discontinuity::Always,
    };
    let display_timestamp =
        enum_member(input, "DisplayFragmentTimestamp", &["ALWAYS", "NEVER"])? == Some("ALWAYS");
    let _ = enum_member(input, "ContainerFormat", &["FRAGMENTED_MP4", "MPEG_TS"])?;

    let stream = archived_stream(app, input)?;
    let now = now_ms();
    let name = stream.record().name;
    let candidates = match range {
        Some(r) => fragments_in(app, &stream, r).await?,
        None => {
            let mut all = super::all_fragments(app, &stream).await?;
            all.retain(|m| m.server_ts_ms + LIVE_WINDOW_MS >= now);
            all
        }
    };
    let Some(first) = candidates.first() else {
        return Err(ApiError::not_found(match range {
            Some(_) => format!("stream '{name}' has no fragments in the requested time range"),
            None => {
                format!("stream '{name}' has no fragments from the last 30 seconds to play live")
            }
        }));
    };
    // The tracks must be playable: check the first fragment's header like the service does.
    let headers = headers_of(app, &stream, std::slice::from_ref(first)).await?;
    if let Some(h) = headers.get(&first.header_id)
        && let Some(t) = h.tracks.iter().find(|t| t.codec == Codec::G711)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnsupportedStreamMediaTypeException",
            format!(
                "track {} is G.711 audio, which streaming sessions do not carry (AAC only)",
                t.number
            ),
        ));
    }
    let base_ms = candidates
        .iter()
        .map(|m| m.producer_ts_ms)
        .min()
        .unwrap_or(0)
        .saturating_sub(if mode == PlaybackMode::OnDemand {
            0
        } else {
            3_600_000
        });
    Ok(Session {
        stream_id: stream.id,
        stream_name: name,
        mode,
        producer_ts,
        start_ms: range.map(|r| r.start_ms),
        end_ms: range.and_then(|r| (r.end_ms != u64::MAX).then_some(r.end_ms)),
        packaging,
        discontinuity,
        display_timestamp,
        max_fragments,
        created_ms: now,
        expires_ms: now + expires_s * 1000,
        base_ms,
        dash: false,
        display_number: false,
    })
}

/// LIVE_REPLAY may leave EndTimestamp out (the session then follows the stream); ON_DEMAND needs the whole range.
fn lenient_selector(
    input: &Input,
    member: &str,
    mode: PlaybackMode,
) -> Result<TimeRange, ApiError> {
    if mode == PlaybackMode::LiveReplay
        && let Some(sel) = input.opt_object(member)?
        && let Some(range) = sel.opt_object("TimestampRange")?
        && !range.has("EndTimestamp")
    {
        let kind = match sel.req_str("FragmentSelectorType")? {
            "PRODUCER_TIMESTAMP" => TimestampKind::Producer,
            "SERVER_TIMESTAMP" => TimestampKind::Server,
            other => {
                return Err(constraint(
                    &format!("{member}.FragmentSelectorType"),
                    other,
                    "Member must satisfy enum value set: [PRODUCER_TIMESTAMP, SERVER_TIMESTAMP]",
                ));
            }
        };
        let start_ms = range.opt_timestamp_ms("StartTimestamp")?.ok_or_else(|| {
            ApiError::invalid_argument("TimestampRange.StartTimestamp is required")
        })?;
        return Ok(TimeRange {
            kind,
            start_ms,
            end_ms: u64::MAX,
        });
    }
    parse_selector(input, member)
}

pub async fn get_hls_streaming_session_url(
    app: Arc<App>,
    input: Input,
) -> Result<Response<ResponseBody>, ApiError> {
    let packaging = match enum_member(&input, "ContainerFormat", &["FRAGMENTED_MP4", "MPEG_TS"])? {
        Some("MPEG_TS") => Packaging::MpegTs,
        _ => Packaging::FragmentedMp4,
    };
    let session = create_session(
        &app,
        &input,
        "HLSFragmentSelector",
        "MaxMediaPlaylistFragmentResults",
        packaging,
    )
    .await?;
    let url = format!(
        "{}/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken={}",
        app.url.trim_end_matches('/'),
        encode_token(&session)
    );
    Ok(json_response(&json!({ "HLSStreamingSessionURL": url })))
}

pub async fn get_dash_streaming_session_url(
    app: Arc<App>,
    input: Input,
) -> Result<Response<ResponseBody>, ApiError> {
    let display_number =
        enum_member(&input, "DisplayFragmentNumber", &["ALWAYS", "NEVER"])? == Some("ALWAYS");
    let mut session = create_session(
        &app,
        &input,
        "DASHFragmentSelector",
        "MaxManifestFragmentResults",
        Packaging::FragmentedMp4,
    )
    .await?;
    session.dash = true;
    session.display_number = display_number;
    // DASH players follow the manifest's timeline: no discontinuity marks apply.
    session.discontinuity = Discontinuity::Never;
    let url = format!(
        "{}/dash/v1/getDASHManifest.mpd?SessionToken={}",
        app.url.trim_end_matches('/'),
        encode_token(&session)
    );
    Ok(json_response(&json!({ "DASHStreamingSessionURL": url })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(expires_ms: u64) -> Session {
        Session {
            stream_id: 3,
            stream_name: "cam".into(),
            mode: PlaybackMode::OnDemand,
            producer_ts: true,
            start_ms: Some(1),
            end_ms: Some(2),
            packaging: Packaging::FragmentedMp4,
            discontinuity: Discontinuity::Never,
            display_timestamp: false,
            max_fragments: 1000,
            created_ms: 0,
            expires_ms,
            base_ms: 0,
            dash: false,
            display_number: false,
        }
    }

    #[test]
    fn tokens_round_trip_and_are_checked() {
        let s = session(10_000);
        let t = encode_token(&s);
        assert_eq!(decode_token(&t, 9_999).unwrap(), s);
        let e = decode_token(&t, 10_000).unwrap_err();
        assert_eq!(e.error_type, "NotAuthorizedException");
        assert!(e.message.contains("expired"));
        // Any change to the payload breaks the signature.
        let other = encode_token(&session(99_999_999));
        let forged = format!(
            "{}.{}",
            other.split_once('.').unwrap().0,
            t.split_once('.').unwrap().1
        );
        assert!(
            decode_token(&forged, 0)
                .unwrap_err()
                .message
                .contains("not issued")
        );
        assert!(decode_token("garbage", 0).is_err());
    }
}
