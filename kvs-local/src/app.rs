//! Shared server state: configuration, signature verifier, store and stream registry.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::config::Config;
use crate::error::{Error, StoreError};
use crate::sigv4::Verifier;
use crate::store::Store;
use crate::streams::{Registry, StreamHandle};

/// What every request handler can reach.
pub struct App {
    pub config: Config,
    pub verifier: Verifier,
    pub store: Arc<Store>,
    pub registry: Registry,
    /// Serialises control-plane changes so that check-then-write sequences are atomic.
    pub control: tokio::sync::Mutex<()>,
    /// This server's own URL, returned by GetDataEndpoint.
    pub url: String,
    pub shutdown: watch::Receiver<bool>,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl App {
    pub async fn open(
        config: Config,
        url: String,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<App>, Error> {
        let dir = config.data_dir.clone();
        let (store, streams) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let store = Store::open(&dir)?;
            let mut streams = Vec::new();
            for rec in store.load_streams()? {
                let last = store.last_seq(rec.id)?.unwrap_or(0);
                streams.push((rec, last));
            }
            Ok((store, streams))
        })
        .await
        .map_err(|e| {
            Error::Store(StoreError::Corrupt(format!(
                "store opening task failed: {e}"
            )))
        })??;
        let registry = Registry::default();
        for (rec, last) in streams {
            tracing::info!(stream = %rec.name, fragments_up_to = last, "loaded stream");
            registry.insert(Arc::new(StreamHandle::new(rec, last)));
        }
        Ok(Arc::new(App {
            verifier: Verifier::new(
                config.credentials.clone(),
                config.region.clone(),
                config.check_clock_skew,
            ),
            config,
            store: Arc::new(store),
            registry,
            control: tokio::sync::Mutex::new(()),
            url,
            shutdown,
        }))
    }

    /// Runs blocking store work off the async threads.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Corrupt(format!("storage task failed: {e}")))?
    }
}

/// Periodically removes fragments older than their stream's retention.
pub async fn retention_sweeper(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.config.retention_sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::app::shutdown_requested(&mut shutdown) => return,
        }
        let now = now_ms();
        let cutoffs: Vec<(u64, u64)> = app
            .registry
            .all()
            .iter()
            .filter_map(|h| {
                let hours = h.retention_hours();
                let hour_ms = app.config.retention_hour.as_millis() as u64;
                (hours > 0).then(|| (h.id, now.saturating_sub(hours.saturating_mul(hour_ms))))
            })
            .collect();
        for h in app.registry.all() {
            h.trim_live(now);
            if let Some((_, cutoff)) = cutoffs.iter().find(|(id, _)| *id == h.id) {
                h.expire_live(*cutoff);
            }
        }
        if cutoffs.is_empty() {
            continue;
        }
        match app.store.sweep(cutoffs).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "retention sweep removed expired fragments"),
            Err(e) => tracing::error!(error = %e, "retention sweep failed"),
        }
    }
}

/// Resolves once shutdown is requested (or the server is gone).
pub async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
