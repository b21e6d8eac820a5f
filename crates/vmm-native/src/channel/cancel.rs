//! A one-way switch that ends every wait of a channel at once: a pipe (fd:)
//! has no shutdown(2), and a listener's accept has nothing else to wake it.

use std::sync::Arc;
use tokio::sync::watch;

/// Fired once (close, shutdown); every [`Cancel::wait`], pending or later,
/// then returns.
#[derive(Clone)]
pub struct Cancel {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl Cancel {
    /// A switch not fired yet.
    pub fn new() -> Cancel {
        Cancel { tx: Arc::new(watch::Sender::new(false)) }
    }

    /// Fires the switch; idempotent.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    /// Whether it has fired.
    pub fn fired(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once fired (at once when it already was).
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // Err only when the sender is gone, and we hold it.
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_started_before_or_after_the_fire_returns() {
        let c = Cancel::new();
        assert!(!c.fired());
        let c2 = c.clone();
        let pending = tokio::spawn(async move { c2.wait().await });
        tokio::task::yield_now().await;
        c.fire();
        pending.await.unwrap();
        assert!(c.fired());
        c.wait().await;
    }
}
