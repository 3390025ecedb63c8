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
pub const SIP_REQUESTS: &str = "roomline_sip_requests_received_total";
pub const SIP_RESPONSES: &str = "roomline_sip_responses_received_total";
pub const SIP_RESPONSES_SENT: &str = "roomline_sip_responses_sent_total";
pub const SIP_INVALID: &str = "roomline_sip_invalid_messages_total";
pub const SIP_DROPPED: &str = "roomline_sip_dropped_total";
pub const SIP_SEND_FAILURES: &str = "roomline_sip_send_failures_total";
pub const SIP_CONNECTIONS: &str = "roomline_sip_connections";
pub const SIP_ENDPOINT_TRANSACTIONS: &str = "roomline_sip_endpoint_transactions";
pub const SIP_AUTH: &str = "roomline_sip_auth_total";
pub const CALLS_REFUSED: &str = "roomline_calls_refused_total";
pub const CALLS_ACTIVE: &str = "roomline_calls_active";
pub const CALLS_TOTAL: &str = "roomline_calls_total";
pub const CALL_SETUP_SECONDS: &str = "roomline_call_setup_seconds";
pub const CALL_DURATION_SECONDS: &str = "roomline_call_duration_seconds";
pub const CALLS_MEDIA_ENCRYPTION: &str = "roomline_calls_media_encryption_total";
pub const LIVEKIT_JOIN_SECONDS: &str = "roomline_livekit_join_seconds";
pub const LIVEKIT_RECONNECTS: &str = "roomline_livekit_reconnects_total";
pub const RTP_PACKETS: &str = "roomline_rtp_packets_total";
pub const RTP_LOST: &str = "roomline_rtp_lost_packets_total";
pub const RTP_JITTER_SECONDS: &str = "roomline_rtp_jitter_seconds";
pub const DTMF_EVENTS: &str = "roomline_dtmf_events_total";
pub const TRUNK_FAILOVERS: &str = "roomline_trunk_failovers_total";
pub const TRUNK_UP: &str = "roomline_trunk_up";
pub const JITTER_BUFFER_DELAY_SECONDS: &str = "roomline_jitter_buffer_delay_seconds";
pub const MEDIA_FRAME_SECONDS: &str = "roomline_media_frame_seconds";
pub const MEDIA_FRAMES: &str = "roomline_media_frames_total";
pub const TRUNK_REGISTERED: &str = "roomline_trunk_registered";
pub const ROOM_AUDIO_STALLS: &str = "roomline_room_audio_stalls_total";
pub const ROOM_AUDIO_STALLED_TRACKS: &str = "roomline_room_audio_stalled_tracks";

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
    metrics::describe_counter!(
        SIP_REQUESTS,
        "SIP requests received, by method (INVITE, ACK, BYE, ..., other)."
    );
    metrics::describe_counter!(
        SIP_RESPONSES,
        "SIP responses received, by status class (1xx..6xx)."
    );
    metrics::describe_counter!(
        SIP_RESPONSES_SENT,
        "SIP responses sent (retransmissions and 100 Trying excepted), by status class."
    );
    metrics::describe_counter!(
        SIP_INVALID,
        "Received SIP messages that failed the syntax checks, by the status answered (or drop)."
    );
    metrics::describe_counter!(
        SIP_DROPPED,
        "SIP messages dropped unanswered, by reason (overload, rate_limit, framing, no_transaction, call_queue, connections)."
    );
    metrics::describe_counter!(
        SIP_SEND_FAILURES,
        "SIP messages that could not be sent, by transport."
    );
    metrics::describe_gauge!(SIP_CONNECTIONS, "Open SIP TCP/TLS connections.");
    metrics::describe_gauge!(
        SIP_ENDPOINT_TRANSACTIONS,
        "Server transactions held by the endpoint itself (rejections, OPTIONS)."
    );
    metrics::describe_counter!(
        SIP_AUTH,
        "Inbound digest authentication outcomes (challenge, stale, success, rejected)."
    );
    metrics::describe_counter!(
        CALLS_REFUSED,
        "INVITEs refused before a call started, by reason (draining, max_concurrent, call_rate, source_call_rate, no_trunk, overload)."
    );
    metrics::describe_gauge!(CALLS_ACTIVE, "Calls in progress.");
    metrics::describe_counter!(
        CALLS_TOTAL,
        "Calls ended, by direction (inbound, outbound), trunk and outcome."
    );
    metrics::describe_counter!(
        CALLS_MEDIA_ENCRYPTION,
        "Answered calls ended, by direction and the phone leg's media encryption (none, or the SRTP suite)."
    );
    metrics::describe_histogram!(
        CALL_SETUP_SECONDS,
        "Call setup time: INVITE received to 200 OK sent (inbound), by direction and trunk."
    );
    metrics::describe_histogram!(
        CALL_DURATION_SECONDS,
        "Answered call duration, by direction and trunk."
    );
    metrics::describe_histogram!(
        LIVEKIT_JOIN_SECONDS,
        "Time to join the LiveKit room as a participant."
    );
    metrics::describe_counter!(
        LIVEKIT_RECONNECTS,
        "Broken LiveKit sessions of calls (LiveKit restarting, the network to it down), by result: resumed or rejoined (the call rode it out), gave_up (the reconnect window passed; the call ended as livekit_unreachable)."
    );
    metrics::describe_counter!(
        RTP_PACKETS,
        "RTP packets of ended calls, by direction (rx from the phone, tx to it) and codec."
    );
    metrics::describe_counter!(
        RTP_LOST,
        "RTP packets lost on the phone leg of ended calls, by direction and codec."
    );
    metrics::describe_histogram!(
        RTP_JITTER_SECONDS,
        "Interarrival jitter of the phone's RTP at the end of each call, by codec."
    );
    metrics::describe_counter!(
        DTMF_EVENTS,
        "DTMF digits carried, by direction (from_phone, to_phone) and source (rtp, info)."
    );
    metrics::describe_counter!(
        TRUNK_FAILOVERS,
        "Outbound calls moved from a trunk to its backup, by the trunk that failed."
    );
    metrics::describe_gauge!(
        TRUNK_UP,
        "1 if the trunk answered its last OPTIONS ping, 0 if not (trunks with pings only)."
    );
    metrics::describe_gauge!(
        TRUNK_REGISTERED,
        "1 while the trunk's REGISTER binding is in force, 0 otherwise (registering trunks only)."
    );
    metrics::describe_histogram!(
        JITTER_BUFFER_DELAY_SECONDS,
        "Playout delay of the phone's jitter buffer, sampled once a second per call."
    );
    metrics::describe_histogram!(
        MEDIA_FRAME_SECONDS,
        "Time to process 20 ms of one call's media (decode, mix, encode, both ways), sampled once a second per call, by codec."
    );
    metrics::describe_counter!(
        MEDIA_FRAMES,
        "20 ms audio frames of the phone legs by direction (to_room, to_phone) and path: passthrough (an Opus phone's or room track's packet sent on as it came) or transcoded (encoded here)."
    );
    metrics::describe_counter!(
        ROOM_AUDIO_STALLS,
        "Times a remote audio track was published, subscribed and unmuted but none of its audio reached the call for 5 s (one per episode)."
    );
    metrics::describe_gauge!(
        ROOM_AUDIO_STALLED_TRACKS,
        "Remote audio tracks stalled right now (expected, nothing reaching the call for 5 s or more)."
    );
    metrics::gauge!(ROOM_AUDIO_STALLED_TRACKS).set(0.0);
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}
