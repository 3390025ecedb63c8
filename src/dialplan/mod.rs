//! Call routing, pure functions of the configuration and the call. `trunk_match` finds the
//! trunk an inbound call came through; `route` then picks its rule: (configuration, call
//! summary) -> decision. First matching rule wins, files in name order and rules in file
//! order (the order `Config::rules` keeps). No rule: 404. Rendering fills the room and
//! participant templates (with only the last digits of the caller's number under
//! `hide_phone_number`); the call adds the `sip.*` attributes (`call::attributes`).

use crate::config::defaults::RULE_IDENTITY;
use crate::config::{AgentDispatch, AnswerMode, Config, Rule, RuleAction, TemplateValues};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub mod trunk_match;

/// What routing knows about an inbound call: the matched trunk, the called and caller
/// numbers as received, the Call-ID, and random text for `{random}` (the caller supplies
/// it: routing reads no entropy). The same values fill the templates.
pub type CallSummary<'a> = TemplateValues<'a>;

/// Where the call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Join(Box<JoinPlan>),
    Reject {
        rule: String,
        status: u16,
        reason: Option<String>,
    },
    /// No rule matched: 404 Not Found.
    NoRule,
}

impl Decision {
    /// The SIP status a call gets when it is not joined to a room.
    pub fn reject_status(&self) -> Option<u16> {
        match self {
            Decision::Join(_) => None,
            Decision::Reject { status, .. } => Some(*status),
            Decision::NoRule => Some(404),
        }
    }
}

/// A rendered join: everything the call task needs to join the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPlan {
    pub rule: String,
    pub room: String,
    pub identity: String,
    pub name: String,
    pub metadata: Option<String>,
    /// The rule's attributes (the call adds the `sip.*` ones: `call::attributes`).
    pub attributes: Vec<(String, String)>,
    pub pin: Option<String>,
    pub agents: Vec<(String, Option<String>)>,
    pub answer: AnswerMode,
    pub ringing_timeout: Duration,
    pub early_media: bool,
    /// Keep the caller's number out of the room: no `sip.phoneNumber`, identity and
    /// name without it.
    pub hide_phone_number: bool,
}

fn matches(rule: &Rule, call: &CallSummary<'_>) -> bool {
    (rule.trunks.is_empty() || rule.trunks.iter().any(|t| t == call.trunk))
        && rule.called.as_ref().is_none_or(|p| p.matches(call.called))
        && rule.caller.as_ref().is_none_or(|p| p.matches(call.caller))
}

/// The rule a call matches (the first), if any: what `route` renders. The endpoint asks
/// it before admission, so a call the dialplan refuses spends no calls-per-second
/// allowance (only trunk, called and caller are read).
pub fn rule_for<'c>(cfg: &'c Config, call: &CallSummary<'_>) -> Option<&'c Rule> {
    cfg.rules.iter().find(|r| matches(r, call))
}

/// Routes a call.
pub fn route(cfg: &Config, call: &CallSummary<'_>) -> Decision {
    let Some(rule) = rule_for(cfg, call) else {
        return Decision::NoRule;
    };
    match &rule.action {
        RuleAction::Reject { status, reason } => Decision::Reject {
            rule: rule.name.clone(),
            status: *status,
            reason: reason.clone(),
        },
        RuleAction::Join(j) => {
            // hide_phone_number: templates see only the last digits, and the default
            // identity becomes a hash of the number (LiveKit's form)
            let masked = masked_number(call.caller);
            let hidden = CallSummary {
                caller: &masked,
                ..call.clone()
            };
            let v = if j.hide_phone_number { &hidden } else { call };
            let attributes: Vec<(String, String)> = j
                .attributes
                .iter()
                .map(|(k, t)| (k.clone(), t.render(v)))
                .collect();
            let identity = if j.hide_phone_number && j.identity.source() == RULE_IDENTITY {
                hidden_identity(call.caller)
            } else {
                j.identity.render(v)
            };
            Decision::Join(Box::new(JoinPlan {
                rule: rule.name.clone(),
                room: j.room.render(v),
                identity,
                name: j.name.render(v),
                metadata: j.metadata.clone(),
                attributes,
                pin: j.pin.clone(),
                agents: j
                    .agents
                    .iter()
                    .map(|AgentDispatch { name, metadata }| (name.clone(), metadata.clone()))
                    .collect(),
                answer: j.answer,
                ringing_timeout: j.ringing_timeout,
                early_media: j.early_media,
                hide_phone_number: j.hide_phone_number,
            }))
        }
    }
}

/// The identity of a caller whose number is hidden: `sip_` and 16 hex digits of
/// SHA-256 of the number (LiveKit's form), the same for every call from that number.
pub fn hidden_identity(number: &str) -> String {
    let h = Sha256::digest(number.as_bytes());
    let mut s = String::from("sip_");
    for b in &h[..8] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What is left of a hidden number: its last 4 characters (the last 1 when it has 4 or
/// fewer), as LiveKit shows it in the participant name.
pub fn masked_number(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    let keep = if chars.len() <= 4 { 1 } else { 4 };
    chars[chars.len().saturating_sub(keep)..].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The example configuration shipped at the repository root.
    fn examples() -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("roomline.yaml");
        crate::config::load_with_env(&path, &|_| None).expect("examples are valid")
    }

    fn call<'a>(trunk: &'a str, called: &'a str, caller: &'a str) -> CallSummary<'a> {
        CallSummary {
            trunk,
            called,
            caller,
            call_id: "c1",
            random: "r4nd",
        }
    }

    #[test]
    fn first_match_wins_in_file_order() {
        let cfg = examples();
        // 00-blocklist comes before everything: a premium-rate caller is refused anywhere.
        let d = route(&cfg, &call("carrier", "+15550100", "+19005551234"));
        assert_eq!(
            d,
            Decision::Reject {
                rule: "block-premium-rate".into(),
                status: 603,
                reason: Some("Decline".into())
            }
        );
        assert_eq!(d.reject_status(), Some(603));
    }

    #[test]
    fn per_caller_room_with_sip_attributes() {
        let cfg = examples();
        let Decision::Join(p) = route(&cfg, &call("carrier", "15550100", "+447700900089")) else {
            panic!()
        };
        assert_eq!(p.rule, "support");
        assert_eq!(p.room, "support-+447700900089");
        assert_eq!(p.identity, "sip_+447700900089");
        assert_eq!(p.name, "Phone +447700900089");
        assert_eq!(p.answer, AnswerMode::OnFirstTrack);
        assert_eq!(p.ringing_timeout, Duration::from_secs(20));
        assert_eq!(p.agents, vec![("support-agent".to_string(), None)]);
        let attr = |k: &str| {
            p.attributes
                .iter()
                .find(|(a, _)| a == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(attr("line"), Some("support"));
        // the sip.* keys are the call's (call::attributes), not the rule's
        assert!(!p.attributes.iter().any(|(k, _)| k.starts_with("sip.")));
        assert!(!p.hide_phone_number);
    }

    #[test]
    fn hidden_numbers_stay_out_of_the_plan() {
        let mut cfg = examples();
        for r in &mut cfg.rules {
            if let RuleAction::Join(j) = &mut r.action {
                j.hide_phone_number = true;
            }
        }
        let Decision::Join(p) = route(&cfg, &call("carrier", "15550100", "+447700900089")) else {
            panic!()
        };
        assert!(p.hide_phone_number);
        assert_eq!(p.identity, hidden_identity("+447700900089"));
        assert_eq!(p.name, "Phone 0089");
        assert_eq!(p.room, "support-0089");
        let all = format!("{p:?}");
        assert!(!all.contains("7700900089"), "{all}");
    }

    #[test]
    fn pin_room_trunk_filter_and_no_rule() {
        let cfg = examples();
        let Decision::Join(p) = route(&cfg, &call("carrier", "+15550101", "+15551112222")) else {
            panic!()
        };
        assert_eq!(
            (p.room.as_str(), p.pin.as_deref(), p.name.as_str()),
            ("weekly-conference", Some("4321"), "Caller +15551112222")
        );
        // The conference rule is for the carrier trunk only; from the PBX it is the lobby.
        let Decision::Join(p) = route(&cfg, &call("office-pbx", "+15550101", "2001")) else {
            panic!()
        };
        assert_eq!(
            (p.rule.as_str(), p.room.as_str()),
            ("office-lobby", "lobby-+15550101")
        );
        // Nothing routes a carrier call to an unknown number.
        let d = route(&cfg, &call("carrier", "+15559999", "+15551112222"));
        assert_eq!(
            (d.clone(), d.reject_status()),
            (Decision::NoRule, Some(404))
        );
    }
}
