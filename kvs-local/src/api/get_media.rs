//! GetMedia: a chain of per-fragment Matroska documents from a start selector, tailing the stream live (a fragment
//! is sent as soon as it is RECEIVED) and ending after a few seconds without a new fragment.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Input;
use super::control::resolve_stream;
use crate::app::{App, now_ms};
use crate::body::ResponseBody;
use crate::error::{ApiError, StoreError};
use crate::fragment_id::{self, fragment_number};
use crate::media::{
    DocumentKind, ERROR_FRAGMENT_NOT_FOUND, ERROR_INTERNAL, FragmentLabel, error_document,
    fragment_document,
};
use crate::store::FragmentMeta;
use crate::streams::{ReadGuard, StreamHandle};

/// A fragment ready to send.
pub struct Fragment {
    pub meta: FragmentMeta,
    pub header: Bytes,
    pub data: Bytes,
}

/// Checks a fragment number member (`^[0-9]+$`, 1-128 characters) and returns the sequence number inside it,
/// `None` when it has digits only but is not a number this server issues.
pub fn parse_fragment_number(member: &str, value: &str) -> Result<Option<u64>, ApiError> {
    if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(super::input::constraint(
            member,
            value,
            "Member must satisfy regular expression pattern: ^[0-9]+$",
        ));
    }
    Ok(fragment_id::decode(value).map(|(seq, _)| seq))
}

/// Whether the fragment with this number is in the stream (stored or in memory).
async fn fragment_exists(
    app: &App,
    stream: &StreamHandle,
    number: &str,
    seq: u64,
) -> Result<bool, StoreError> {
    if let Some(f) = stream.live_get(seq) {
        return Ok(fragment_number(f.meta.seq, f.meta.server_ts_ms) == number);
    }
    if stream.retention_hours() == 0 {
        return Ok(false);
    }
    let id = stream.id;
    let meta = app.blocking(move |s| s.fragment(id, seq)).await?;
    Ok(meta.is_some_and(|m| fragment_number(m.seq, m.server_ts_ms) == number))
}

/// Metadata of every fragment the stream can serve (stored and in memory), in sequence order.
pub async fn all_fragments(
    app: &App,
    stream: &StreamHandle,
) -> Result<Vec<FragmentMeta>, StoreError> {
    let id = stream.id;
    let mut metas = if stream.retention_hours() > 0 {
        app.blocking(move |s| s.fragments(id)).await?
    } else {
        Vec::new()
    };
    let last = metas.last().map_or(0, |m| m.seq);
    metas.extend(stream.live_metas().into_iter().filter(|m| m.seq > last));
    Ok(metas)
}

/// The first fragment with a sequence number above `after`, from memory or from the store.
pub async fn next_fragment(
    app: &App,
    stream: &StreamHandle,
    after: u64,
) -> Result<Option<Fragment>, StoreError> {
    let live = stream.live_after(after);
    let id = stream.id;
    let stored = if stream.retention_hours() > 0 {
        app.blocking(move |s| s.fragments_after(id, Some(after), 1))
            .await?
            .into_iter()
            .next()
    } else {
        None
    };
    match (live, stored) {
        (Some(l), s) if s.is_none_or(|s| l.meta.seq <= s.seq) => Ok(Some(Fragment {
            meta: l.meta,
            header: l.header.clone(),
            data: l.data.clone(),
        })),
        (_, Some(meta)) => {
            let (header, data) = app
                .blocking(move |s| Ok((s.header(id, meta.header_id)?, s.read_fragment(id, &meta)?)))
                .await?;
            Ok(Some(Fragment { meta, header, data }))
        }
        (None, None) => Ok(None),
        (Some(_), None) => Ok(None),
    }
}

pub async fn handle(app: Arc<App>, input: Input) -> Result<Response<ResponseBody>, ApiError> {
    let stream = resolve_stream(&app, &input)?;
    let selector = input
        .opt_object("StartSelector")?
        .ok_or_else(|| ApiError::invalid_argument("StartSelector is required"))?;
    let kind = selector.req_str("StartSelectorType")?;
    let after = match kind {
        "NOW" => stream.last_received(),
        "EARLIEST" => 0,
        "FRAGMENT_NUMBER" => {
            let n = selector.opt_str("AfterFragmentNumber")?.ok_or_else(|| {
                ApiError::invalid_argument("AfterFragmentNumber is required with FRAGMENT_NUMBER")
            })?;
            match parse_fragment_number("AfterFragmentNumber", n)? {
                Some(seq) if fragment_exists(&app, &stream, n, seq).await? => seq,
                _ => return Ok(not_found(n)),
            }
        }
        "CONTINUATION_TOKEN" => {
            let t = selector.opt_str("ContinuationToken")?.ok_or_else(|| {
                ApiError::invalid_argument("ContinuationToken is required with CONTINUATION_TOKEN")
            })?;
            match parse_fragment_number("ContinuationToken", t)? {
                Some(seq) if fragment_exists(&app, &stream, t, seq).await? => seq,
                _ => return Ok(not_found(t)),
            }
        }
        "PRODUCER_TIMESTAMP" | "SERVER_TIMESTAMP" => {
            let ts = selector
                .opt_timestamp_ms("StartTimestamp")?
                .ok_or_else(|| {
                    ApiError::invalid_argument(format!("StartTimestamp is required with {kind}"))
                })?;
            let producer = kind == "PRODUCER_TIMESTAMP";
            let metas = all_fragments(&app, &stream).await?;
            // The fragment that contains the timestamp, else the first one after it.
            match metas.iter().find(|m| {
                let start = if producer {
                    m.producer_ts_ms
                } else {
                    m.server_ts_ms
                };
                start >= ts || start + m.duration_ms > ts
            }) {
                Some(m) => m.seq - 1,
                None => stream.last_received(),
            }
        }
        other => {
            return Err(super::input::constraint(
                "StartSelector.StartSelectorType",
                other,
                "Member must satisfy enum value set: [FRAGMENT_NUMBER, SERVER_TIMESTAMP, PRODUCER_TIMESTAMP, NOW, \
                 EARLIEST, CONTINUATION_TOKEN]",
            ));
        }
    };
    let guard = stream.try_begin_read().ok_or_else(|| {
        ApiError::connection_limit(format!(
            "stream '{}' already has {} GetMedia connections",
            stream.record().name,
            crate::streams::MAX_READERS
        ))
    })?;
    let (tx, body) = ResponseBody::channel();
    tokio::spawn(tail(app, stream, guard, after, tx));
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("video/webm"),
    );
    Ok(r)
}

/// A GetMedia response whose body is only the error document for a fragment that is not in the stream.
fn not_found(number: &str) -> Response<ResponseBody> {
    tracing::info!(fragment = number, "GetMedia start fragment not found");
    let mut r = Response::new(ResponseBody::full(error_document(
        "Requested fragment is not found",
        ERROR_FRAGMENT_NOT_FOUND,
    )));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("video/webm"),
    );
    r
}

async fn send_all(tx: &mpsc::Sender<Bytes>, pieces: Vec<Bytes>) -> bool {
    for p in pieces {
        if p.is_empty() {
            continue;
        }
        if tx.send(p).await.is_err() {
            return false;
        }
    }
    true
}

async fn tail(
    app: Arc<App>,
    stream: Arc<StreamHandle>,
    _guard: ReadGuard,
    mut after: u64,
    tx: mpsc::Sender<Bytes>,
) {
    let mut received = stream.subscribe();
    let mut shutdown = app.shutdown.clone();
    let deadline = Instant::now() + app.config.max_connection_duration;
    let idle_end = app.config.get_media_idle_end;
    loop {
        received.borrow_and_update();
        if stream.is_deleted() {
            return;
        }
        match next_fragment(&app, &stream, after).await {
            Ok(Some(f)) => {
                let number = fragment_number(f.meta.seq, f.meta.server_ts_ms);
                let label = FragmentLabel {
                    number: &number,
                    server_ts_ms: f.meta.server_ts_ms,
                    producer_ts_ms: f.meta.producer_ts_ms,
                };
                let behind = now_ms().saturating_sub(f.meta.server_ts_ms);
                if !send_all(
                    &tx,
                    fragment_document(
                        &f.header,
                        &label,
                        &f.data,
                        DocumentKind::GetMedia { behind_ms: behind },
                    ),
                )
                .await
                {
                    return;
                }
                after = f.meta.seq;
                if Instant::now() >= deadline {
                    return;
                }
            }
            Ok(None) => {
                tokio::select! {
                    changed = tokio::time::timeout(idle_end, received.changed()) => {
                        match changed {
                            Ok(Ok(())) => {}
                            // No new fragment in time, or the stream is gone.
                            _ => return,
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => return,
                    // The client went away: free the reader slot now.
                    _ = tx.closed() => return,
                    _ = crate::app::shutdown_requested(&mut shutdown) => return,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "GetMedia cannot read a fragment");
                let _ = tx
                    .send(error_document(
                        &format!("Internal error: {e}"),
                        ERROR_INTERNAL,
                    ))
                    .await;
                return;
            }
        }
    }
}
