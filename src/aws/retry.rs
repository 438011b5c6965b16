//! Retries with exponential backoff and full jitter, like the official producer: the delay before retry `n`
//! (0-based) is uniform in `[0, min(10 s, 100 ms * 2^n)]`.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::error::AwsError;

/// First backoff ceiling.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Largest backoff ceiling.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Attempts of an idempotent call before the last error is returned.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// The ceiling of the delay before retry `attempt` (0-based): `min(cap, 100 ms * 2^attempt)`.
pub fn backoff_ceiling(attempt: u32) -> Duration {
    let factor = 1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX);
    let ms = (BACKOFF_BASE.as_millis() as u64).saturating_mul(factor);
    Duration::from_millis(ms).min(BACKOFF_CAP)
}

/// A random delay before retry `attempt` (0-based), uniform in `[0, backoff_ceiling(attempt)]`.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = backoff_ceiling(attempt).as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

/// How many times to try an idempotent call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or `policy.max_attempts` attempts were made;
/// sleeps [`backoff`] between attempts. `on_retry` sees each retryable error and the delay before the next try.
pub async fn retry<T, F, Fut>(
    policy: RetryPolicy,
    mut op: F,
    mut on_retry: impl FnMut(&AwsError, u32, Duration),
) -> Result<T, AwsError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, AwsError>>,
{
    let mut attempt = 0u32;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt + 1 < policy.max_attempts.max(1) => {
                let delay = backoff(attempt);
                on_retry(&e, attempt, delay);
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn ceilings_double_from_100ms_and_cap_at_10s() {
        let expected_ms = [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000];
        for (attempt, ms) in expected_ms.iter().enumerate() {
            assert_eq!(
                backoff_ceiling(attempt as u32),
                Duration::from_millis(*ms),
                "attempt {attempt}"
            );
        }
        assert_eq!(backoff_ceiling(200), BACKOFF_CAP);
        assert_eq!(backoff_ceiling(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn delays_stay_within_bounds_and_are_jittered() {
        for attempt in 0..12 {
            let ceiling = backoff_ceiling(attempt);
            let samples: Vec<Duration> = (0..200).map(|_| backoff(attempt)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: the values spread over the range instead of sitting at the ceiling.
            let distinct: std::collections::HashSet<_> = samples.iter().collect();
            assert!(distinct.len() > 10, "attempt {attempt}: {distinct:?}");
            assert!(samples.iter().any(|d| *d < ceiling / 2));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_only_and_stops_at_the_limit() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, AwsError> = retry(
            RetryPolicy { max_attempts: 3 },
            |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(AwsError::Throttling {
                    message: "slow down".into(),
                })
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!(
            r,
            Err(AwsError::Throttling {
                message: "slow down".into()
            })
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let r: Result<u32, AwsError> = retry(
            RetryPolicy::default(),
            |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(AwsError::ResourceNotFound {
                    message: "no stream".into(),
                })
            },
            |_, _, _| {},
        )
        .await;
        assert!(matches!(r, Err(AwsError::ResourceNotFound { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let r = retry(
            RetryPolicy::default(),
            |attempt| async move {
                if attempt < 2 {
                    Err(AwsError::Network("reset".into()))
                } else {
                    Ok(attempt)
                }
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!(r, Ok(2));
    }
}
