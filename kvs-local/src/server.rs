//! The listener: accepts TCP (or TLS) connections, serves HTTP/1.1 on each with hyper, runs the retention sweep,
//! and shuts everything down on request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::App;
use crate::config::Config;
use crate::error::Error;

/// How long shutdown waits for open connections to finish before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Entry point to run the server.
pub struct Server;

/// A running server.
pub struct RunningServer {
    addr: SocketAddr,
    url: String,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    app: Arc<App>,
}

impl Server {
    /// Opens the store, binds the listener and starts serving. Returns once the server accepts connections.
    pub async fn start(config: Config) -> Result<RunningServer, Error> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let tls = match &config.tls {
            Some(files) => Some(crate::tls::acceptor(files)?),
            None => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let app = App::open(config, url.clone(), shutdown_rx.clone()).await?;
        let task = tokio::spawn(serve(listener, tls, app.clone(), shutdown_rx));
        tracing::info!(%url, "kvs-local started");
        Ok(RunningServer {
            addr,
            url,
            shutdown,
            task,
            app,
        })
    }
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (or https), the control-plane and data endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops accepting, ends streaming requests, waits briefly for connections, and closes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        let app = self.app;
        let _ = tokio::task::spawn_blocking(move || app.store.close()).await;
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let sweeper = tokio::spawn(crate::app::retention_sweeper(app.clone(), shutdown.clone()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Running out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(connection(stream, peer, tls.clone(), app.clone(), shutdown.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(open = connections.len(), "closing connections that did not finish");
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                break;
            }
        }
    }
    let _ = sweeper.await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Arc<App>,
    shutdown: watch::Receiver<bool>,
) {
    match tls {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(s) => serve_http(TokioIo::new(s), peer, app, shutdown).await,
            Err(e) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
        },
        None => serve_http(TokioIo::new(stream), peer, app, shutdown).await,
    }
}

async fn serve_http<I>(io: I, peer: SocketAddr, app: Arc<App>, mut shutdown: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(crate::api::handle(app, req, peer).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(4 * 1024 * 1024)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = crate::app::shutdown_requested(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error during shutdown");
            }
        }
    }
}
