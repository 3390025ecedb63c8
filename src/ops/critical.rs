//! Tasks the daemon cannot run without (the SIP endpoint, the call manager). A panic in
//! an ordinary task (one call) is contained by tokio and costs that call only; a panic in
//! one of these would leave a process that looks alive, answers `/health`, and handles no
//! SIP at all until a watchdog, if any, notices. So their end is reported here, and the
//! daemon exits with a failure status at once: the service manager restarts it, and the
//! call journal ends what the dead process left behind.

use std::future::Future;
use tokio::sync::mpsc;

/// How a critical task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The task's name, as given to [`Critical::spawn`].
    pub task: &'static str,
    /// The panic's message, or `None` if the task returned (or was cancelled).
    pub panic: Option<String>,
}

/// The set of critical tasks: spawn them here, await [`Critical::ended`].
#[derive(Debug)]
pub struct Critical {
    tx: mpsc::UnboundedSender<Ended>,
    rx: mpsc::UnboundedReceiver<Ended>,
}

impl Default for Critical {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Critical { tx, rx }
    }
}

impl Critical {
    /// Spawns `fut` as the critical task `task` (a handful per process, so the
    /// unbounded channel holds at most that many reports).
    pub fn spawn<F>(&self, task: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = tokio::spawn(fut);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let panic = match inner.await {
                Ok(()) => None,
                Err(e) => e.try_into_panic().ok().map(|p| panic_message(&*p)),
            };
            let _ = tx.send(Ended { task, panic });
        });
    }

    /// Resolves when a critical task has ended (never, while all run).
    pub async fn ended(&mut self) -> Ended {
        match self.rx.recv().await {
            Some(e) => e,
            // we hold a sender ourselves, so the channel never closes
            None => std::future::pending().await,
        }
    }
}

/// A panic payload as text (`panic!` gives a `&str` or a `String`).
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_message() {
        let mut c = Critical::default();
        c.spawn("steady", std::future::pending());
        c.spawn("endpoint", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let n = 7;
            panic!("unexpected state {n}");
        });
        let e = tokio::time::timeout(Duration::from_secs(5), c.ended())
            .await
            .expect("reported");
        assert_eq!(
            e,
            Ended {
                task: "endpoint",
                panic: Some("unexpected state 7".into())
            }
        );
        // the task that still runs is not reported
        assert!(
            tokio::time::timeout(Duration::from_millis(50), c.ended())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_is_reported_without_a_panic() {
        let mut c = Critical::default();
        c.spawn("manager", async {});
        c.spawn("static", async { panic!("literal") });
        let mut seen = [
            tokio::time::timeout(Duration::from_secs(5), c.ended())
                .await
                .unwrap(),
            tokio::time::timeout(Duration::from_secs(5), c.ended())
                .await
                .unwrap(),
        ];
        seen.sort_by_key(|e| e.task);
        assert_eq!(
            seen[0],
            Ended {
                task: "manager",
                panic: None
            }
        );
        assert_eq!(
            seen[1],
            Ended {
                task: "static",
                panic: Some("literal".into())
            }
        );
    }
}
