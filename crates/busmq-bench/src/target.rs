//! What the benchmark runs against: a broker at a URL, or one started in
//! this process (broker and store together, as `busmq serve` runs them).

use std::str::FromStr;

use anyhow::Context;
use busmq_broker::BrokerConfig;
use busmq_storage_server::{self as backend, BackendOptions, BackendSpec};
use tokio_util::sync::CancellationToken;

use crate::BenchArgs;

/// A broker to benchmark, and how to stop it if this process started it.
pub struct Target {
    pub url: String,
    pub description: String,
    shutdown: Option<CancellationToken>,
    server: Option<tokio::task::JoinHandle<()>>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Target {
    pub async fn start(args: &BenchArgs) -> anyhow::Result<Target> {
        if let Some(url) = &args.server {
            return Ok(Target {
                url: url.clone(),
                description: format!("broker at {url}"),
                shutdown: None,
                server: None,
                _data_dir: None,
            });
        }
        // Once per process: a sweep starts a broker per step.
        if let Some(addr) = args.metrics_listen
            && !busmq_server::metrics::enabled()
        {
            busmq_server::metrics::serve(
                busmq_server::metrics::MetricsListen(Some(addr)),
                busmq_server::metrics::DEFAULT_MAX_QUEUES,
                CancellationToken::new(),
            )
            .await
            .context("serving metrics")?;
        }
        let spec = BackendSpec::from_str(&args.storage)?;
        let (data_dir, temp) = match &args.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::tempdir().context("creating a temporary data directory")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let storage = backend::open(&spec, &BackendOptions { data_dir })
            .await
            .with_context(|| format!("opening storage {}", args.storage))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let config = BrokerConfig::default();
        let serving = busmq_broker::serve(listener, storage, config, shutdown.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "in-process broker failed");
            }
        });
        Ok(Target {
            url,
            description: format!("in-process broker, storage {}", args.storage),
            shutdown: Some(shutdown),
            server: Some(server),
            _data_dir: temp,
        })
    }

    pub async fn stop(mut self) {
        if let Some(token) = self.shutdown.take() {
            token.cancel();
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        }
    }
}
