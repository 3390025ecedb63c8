//! Metric names (constants, with help text) and the Prometheus recorder. Labels are
//! bounded: trunk name, direction, outcome, result; never a number or a remote host.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const BUILD_INFO: &str = "roomline_build_info";
pub const CONFIG_RELOADS: &str = "roomline_config_reloads_total";
pub const CONFIG_LAST_RELOAD_OK: &str = "roomline_config_last_reload_success";
pub const CONFIG_TRUNKS: &str = "roomline_config_trunks";
pub const CONFIG_RULES: &str = "roomline_config_rules";
pub const DRAINING: &str = "roomline_draining";
pub const LIVEKIT_PROBE_SECONDS: &str = "roomline_livekit_probe_seconds";

/// Installs the global recorder (once per process) and describes every metric.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    metrics::describe_gauge!(BUILD_INFO, "Always 1; the version label tells the build.");
    metrics::describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads by result (ok, failed)."
    );
    metrics::describe_gauge!(
        CONFIG_LAST_RELOAD_OK,
        "1 if the last configuration load succeeded, 0 if it was refused."
    );
    metrics::describe_gauge!(CONFIG_TRUNKS, "Trunks in the configuration in force.");
    metrics::describe_gauge!(
        CONFIG_RULES,
        "Dialplan rules in the configuration in force."
    );
    metrics::describe_gauge!(DRAINING, "1 while the daemon drains before stopping.");
    metrics::describe_histogram!(
        LIVEKIT_PROBE_SECONDS,
        "Round-trip time of LiveKit health probes."
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}
