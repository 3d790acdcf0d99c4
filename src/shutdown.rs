//! The process's stop signal: Ctrl-C or SIGTERM, as a watch that turns true once.

use tokio::sync::watch;

/// Becomes true on Ctrl-C or SIGTERM; jobs stop at their next batch boundary.
pub fn signal() -> watch::Receiver<bool> {
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        tracing::warn!("stopping at the next batch boundary");
        let _ = sender.send(true);
    });
    receiver
}
