//! Running one behaviour test against both ways of deploying busmq.
//!
//! A broker over an in-process store (`busmq serve`) and a broker that
//! reaches a separate `busmq-storage` process must behave the same: every
//! error crosses the storage hop with its reason, so the broker branches on
//! it identically. [`in_both_deployments!`](crate::in_both_deployments)
//! turns each test into two, one per [`Deployment`], and the test's set-up
//! reads [`current`] to build the bus it asked for.

use std::future::Future;

/// How a test's bus is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// The broker uses its store in its own process, as `busmq serve` does.
    InProcess,
    /// The broker reaches the store through a `busmq-storage` process.
    Split,
}

tokio::task_local! {
    static DEPLOYMENT: Deployment;
}

/// The deployment the running test asked for, if it runs under
/// [`in_both_deployments!`](crate::in_both_deployments).
pub fn current() -> Option<Deployment> {
    DEPLOYMENT.try_with(|d| *d).ok()
}

/// Runs `test` with [`current`] answering `deployment`.
pub async fn run_in<F: Future>(deployment: Deployment, test: F) -> F::Output {
    DEPLOYMENT.scope(deployment, test).await
}

/// Runs each named test function in both deployments: for an
/// `async fn name()` written as a plain function, generates a module `name`
/// with the tests `in_process` and `split`, each running the function under
/// its [`Deployment`]. Arguments of `#[tokio::test(..)]` follow the name in
/// parentheses:
///
/// ```ignore
/// busmq_testkit::in_both_deployments!(
///     ids_are_dense,
///     many_streams(flavor = "multi_thread", worker_threads = 2),
/// );
/// ```
#[macro_export]
macro_rules! in_both_deployments {
    ($($name:ident $(($($args:tt)*))?),* $(,)?) => {$(
        mod $name {
            #[tokio::test $(($($args)*))?]
            async fn in_process() {
                $crate::deployment::run_in(
                    $crate::deployment::Deployment::InProcess,
                    super::$name(),
                )
                .await
            }

            #[tokio::test $(($($args)*))?]
            async fn split() {
                $crate::deployment::run_in($crate::deployment::Deployment::Split, super::$name())
                    .await
            }
        }
    )*};
}
