//! `cmdop-relay serve` and `cmdop-relay config check`: the settings become a running server, with metrics,
//! `serve.json` and a graceful stop on SIGTERM or Ctrl-C.

use anyhow::{Context, Result};
use cmdop_relay::metrics;
use cmdop_relay::server::{Server, ServerConfig};
use cmdop_relay::tls::TlsIdentity;

use crate::admin_verbs::now;
use crate::relay_settings::{self, Loaded, ServeFlags, ServeSettings};
use crate::status_command::RunState;

/// Runs the relay with `settings` until SIGTERM or Ctrl-C, then drains and stops.
pub(crate) fn serve(settings: ServeSettings) -> Result<()> {
    let ServeSettings {
        data_dir,
        listen,
        cert,
        metrics,
        drain_timeout,
        max_connections,
    } = settings;
    let tls = match cert {
        Some((cert, key)) => TlsIdentity::from_pem_files(&cert, &key)?,
        None => {
            let (tls, generated) = TlsIdentity::load_or_generate(&data_dir)?;
            if generated {
                tracing::info!(data_dir = %data_dir.display(), "generated a self-signed certificate");
            }
            tls
        }
    };
    let fingerprint = tls.fingerprint();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut config = ServerConfig::new(data_dir.clone(), listen, tls);
        config.drain_timeout = drain_timeout;
        config.limits.max_connections = max_connections;
        let server = Server::bind(config)?;
        let addr = server.local_addr()?;
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics_addr = match metrics {
            Some(metrics_addr) => {
                let listener = metrics::bind_http(metrics_addr).await?;
                let bound = listener.local_addr()?;
                tokio::spawn(metrics::serve_http(
                    listener,
                    server.metrics(),
                    async move {
                        let _ = metrics_stopped.await;
                    },
                ));
                Some(bound)
            }
            None => None,
        };
        let _published = RunState {
            pid: std::process::id(),
            listen: addr,
            metrics: metrics_addr,
            fingerprint: fingerprint.to_string(),
            started_at: now().as_unix_seconds(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
        .publish(&data_dir)?;
        // The fingerprint goes to stdout so scripts can capture it; everything else is logging.
        println!("relay fingerprint: {fingerprint}");
        println!("listening on {addr}");
        if let Some(metrics_addr) = metrics_addr {
            println!("metrics on http://{metrics_addr}/metrics");
        }
        tracing::info!(%addr, %fingerprint, metrics = ?metrics_addr, "cmdop-relay listening");
        server.run(shutdown_signal()).await?;
        let _ = stop_metrics.send(());
        tracing::info!("cmdop-relay stopped");
        anyhow::Ok(())
    })?;
    Ok(())
}

/// `config check`: the config file has loaded (unknown keys and bad values are errors naming the line); now
/// the settings `serve` would use are resolved exactly as `serve` resolves them (flags, environment, file,
/// defaults), the certificate is loaded and the data directory looked at, and everything is printed.
pub(crate) fn config_check(loaded: &Loaded, flags: ServeFlags) -> Result<()> {
    let serve = loaded.serve(flags)?;
    if let Some((cert, key)) = &serve.cert {
        TlsIdentity::from_pem_files(cert, key).with_context(|| {
            format!(
                "the certificate {} and key {} do not load",
                cert.display(),
                key.display()
            )
        })?;
    }
    if serve.data_dir.exists() && !serve.data_dir.is_dir() {
        anyhow::bail!(
            "data directory {} exists but is not a directory; point --data-dir (or data_dir) elsewhere",
            serve.data_dir.display()
        );
    }
    match &loaded.path {
        Some(path) => println!("{} is valid; `serve` would use:", path.display()),
        None => println!(
            "no config file ({} does not exist); from flags and environment, `serve` would use:",
            relay_settings::DEFAULT_CONFIG
        ),
    }
    println!(
        "  data_dir      = {}{}",
        serve.data_dir.display(),
        if serve.data_dir.is_dir() {
            ""
        } else {
            " (created at start)"
        }
    );
    println!("  listen        = {}", serve.listen);
    match &serve.cert {
        Some((cert, key)) => println!("  cert, key     = {}, {}", cert.display(), key.display()),
        None => println!("  cert, key     = (the generated self-signed certificate)"),
    }
    println!(
        "  metrics       = {}",
        serve
            .metrics
            .map_or_else(|| "off".to_owned(), |m| m.to_string())
    );
    println!("  drain_timeout = {:?}", serve.drain_timeout);
    println!("  max_connections = {}", serve.max_connections);
    println!(
        "  log_format    = {:?}",
        loaded.file.log_format.unwrap_or_default()
    );
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
