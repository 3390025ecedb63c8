//! HTTP listener: liveness now; readiness, metrics and call control join it in later work.

use axum::{Router, routing::get};

/// The HTTP routes the daemon serves.
pub fn router() -> Router {
    Router::new().route("/health", get(|| async { "ok\n" }))
}
