//! `cmdop-relay serve` and `cmdop-relay config check`: the settings become a running server, with metrics,
//! `serve.json` and a graceful stop on SIGTERM or Ctrl-C.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cmdop_relay::metrics;
use cmdop_relay::server::{Server, ServerConfig};
use cmdop_relay::tls::TlsIdentity;

use crate::admin_verbs::now;
use crate::relay_settings::{self, ServeFlags, ServeSettings};
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

/// `config check`: parses the file, fills in the defaults, checks that certificate files load, and prints
/// the settings `serve` would use.
pub(crate) fn config_check(explicit: Option<&Path>) -> Result<()> {
    let loaded = relay_settings::load(explicit)?;
    let Some(path) = loaded.path.clone() else {
        anyhow::bail!(
            "no config file to check: pass --config FILE (or set CMDOP_RELAY_CONFIG); {} does not exist",
            relay_settings::DEFAULT_CONFIG
        );
    };
    // Check the values the file sets on their own, without flags or the environment mixing in.
    let data_dir = loaded.file.data_dir.clone();
    let serve = loaded.serve(ServeFlags {
        // A file without data_dir is fine (the flag may give it); check the rest regardless.
        data_dir: Some(
            data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("<--data-dir>")),
        ),
        ..ServeFlags::default()
    })?;
    if let Some((cert, key)) = &serve.cert {
        TlsIdentity::from_pem_files(cert, key)
            .with_context(|| format!("{}: cert/key do not load", path.display()))?;
    }
    println!("{} is valid", path.display());
    println!(
        "  data_dir      = {}",
        data_dir.map_or_else(
            || "(not set; pass --data-dir)".to_owned(),
            |d| d.display().to_string()
        )
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
