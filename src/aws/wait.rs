//! The one bridge from a GStreamer streaming thread to the async world.
//!
//! A streaming thread calls [`wait`] with a future; the future runs on the plugin's runtime while the thread
//! blocks. The element's `unlock()` calls [`Canceller::cancel`], which makes every pending wait return
//! [`WaitError::Flushing`] at once and every later one return it immediately, until `unlock_stop()` calls
//! [`Canceller::reset`]. Flushing is kept apart from real failures so that an element returns
//! `FlowError::Flushing` instead of posting an error.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{AbortHandle, Abortable, Aborted};

use super::error::AwsError;

/// Why a [`wait`] did not yield the future's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError<E = AwsError> {
    /// The canceller was cancelled (the element is flushing or stopping).
    #[error("cancelled: the element is flushing or stopping")]
    Flushing,
    /// The timeout given to [`wait`] expired.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The future itself failed, or the runtime could not run it.
    #[error(transparent)]
    Failed(E),
}

#[derive(Debug, Default)]
struct CancelState {
    cancelled: bool,
    next_id: u64,
    pending: HashMap<u64, AbortHandle>,
}

/// Cancels pending and future [`wait`] calls; one per element, shared by its streaming thread and `unlock()`.
#[derive(Debug, Default)]
pub struct Canceller {
    state: Mutex<CancelState>,
}

impl Canceller {
    pub fn new() -> Canceller {
        Canceller::default()
    }

    fn lock(&self) -> MutexGuard<'_, CancelState> {
        // The state stays consistent even if a holder panicked: every update is a single assignment.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Aborts every pending wait and makes later waits return `Flushing` until [`Canceller::reset`].
    pub fn cancel(&self) {
        let mut state = self.lock();
        state.cancelled = true;
        for (_, handle) in state.pending.drain() {
            handle.abort();
        }
    }

    /// Re-arms the canceller (from `unlock_stop()` or when starting again).
    pub fn reset(&self) {
        self.lock().cancelled = false;
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    fn register(&self, handle: AbortHandle) -> Option<u64> {
        let mut state = self.lock();
        if state.cancelled {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.pending.insert(id, handle);
        Some(id)
    }

    fn unregister(&self, id: u64) {
        self.lock().pending.remove(&id);
    }
}

struct Registration<'a> {
    canceller: &'a Canceller,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.canceller.unregister(self.id);
    }
}

/// Runs `future` on the plugin's runtime and blocks the calling thread until it completes, `timeout` expires
/// (`None`: no limit) or `canceller` is cancelled.
///
/// Must be called from a plain thread (a streaming thread, an application thread), never from inside an async
/// task: that is reported as `Failed` rather than deadlocking or panicking.
pub fn wait<F, T, E>(
    canceller: &Canceller,
    future: F,
    timeout: Option<Duration>,
) -> Result<T, WaitError<E>>
where
    F: Future<Output = Result<T, E>>,
    E: From<AwsError>,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(WaitError::Failed(E::from(AwsError::Runtime(
            "wait() was called from inside an async task; it may only block plain threads".into(),
        ))));
    }
    let rt = super::runtime().map_err(|e| WaitError::Failed(E::from(e)))?;

    let (handle, registration) = AbortHandle::new_pair();
    let Some(id) = canceller.register(handle) else {
        return Err(WaitError::Flushing);
    };
    let _registration = Registration { canceller, id };
    let future = Abortable::new(future, registration);

    let outcome: Result<Result<Result<T, E>, Aborted>, Duration> = rt.block_on(async move {
        match timeout {
            Some(limit) => tokio::time::timeout(limit, future).await.map_err(|_| limit),
            None => Ok(future.await),
        }
    });
    match outcome {
        Err(limit) => Err(WaitError::Timeout(limit)),
        Ok(Err(Aborted)) => Err(WaitError::Flushing),
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(WaitError::Failed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn value_and_failure_pass_through() {
        let c = Canceller::new();
        let v: Result<u32, WaitError> = wait(&c, async { Ok(7) }, None);
        assert_eq!(v, Ok(7));
        let e: Result<u32, WaitError> = wait(
            &c,
            async { Err(AwsError::Network("connection refused".into())) },
            Some(Duration::from_secs(5)),
        );
        assert_eq!(
            e,
            Err(WaitError::Failed(AwsError::Network(
                "connection refused".into()
            )))
        );
    }

    #[test]
    fn timeout_returns_timeout() {
        let c = Canceller::new();
        let start = Instant::now();
        let r: Result<(), WaitError> = wait(
            &c,
            async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            },
            Some(Duration::from_millis(100)),
        );
        assert_eq!(r, Err(WaitError::Timeout(Duration::from_millis(100))));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn cancel_aborts_a_pending_wait_and_later_waits_until_reset() {
        let c = Arc::new(Canceller::new());
        let c2 = c.clone();
        let waiter = std::thread::spawn(move || {
            let start = Instant::now();
            let r: Result<(), WaitError> = wait(
                &c2,
                async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(())
                },
                None,
            );
            (r, start.elapsed())
        });
        // Let the waiter register; cancel() also covers the case where it has not yet.
        std::thread::sleep(Duration::from_millis(100));
        c.cancel();
        let (r, elapsed) = waiter.join().expect("waiter thread");
        assert_eq!(r, Err(WaitError::Flushing));
        assert!(elapsed < Duration::from_secs(5));

        let later: Result<u32, WaitError> = wait(&c, async { Ok(1) }, None);
        assert_eq!(later, Err(WaitError::Flushing));
        assert!(c.is_cancelled());

        c.reset();
        let after_reset: Result<u32, WaitError> = wait(&c, async { Ok(2) }, None);
        assert_eq!(after_reset, Ok(2));
        assert!(c.lock().pending.is_empty());
    }

    #[test]
    fn wait_inside_async_context_fails_instead_of_panicking() {
        let rt = crate::aws::runtime().expect("runtime");
        let r = rt.block_on(async {
            let c = Canceller::new();
            let r: Result<(), WaitError> = wait(&c, async { Ok(()) }, None);
            r
        });
        match r {
            Err(WaitError::Failed(AwsError::Runtime(m))) => assert!(m.contains("async task")),
            other => panic!("unexpected {other:?}"),
        }
    }
}
