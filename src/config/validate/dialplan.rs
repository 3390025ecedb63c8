//! Dialplan files: rules (names unique, none unreachable behind a catch-all), their match
//! conditions against the trunk set, and the room or reject each leads to.

use super::Ctx;
use crate::config::error::Origin;
use crate::config::raw::{self, Parsed, Spanned};
use crate::config::types;
use crate::config::{AgentDispatch, AnswerMode, JoinRoom, Rule, RuleAction, Trunk, defaults};
use std::collections::BTreeMap;
use std::path::Path;

pub(super) fn rule_set(
    cx: &mut Ctx<'_>,
    dialplans: Vec<Parsed<raw::Dialplan>>,
    trunks: &[Trunk],
    trunk_names: &[String],
) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut names: BTreeMap<String, Origin> = BTreeMap::new();
    let mut catch_all: Option<(String, Origin)> = None;
    for p in &dialplans {
        let file = &p.file;
        if p.value.rules.is_empty() {
            cx.err(
                Origin::File(file.clone()),
                "rules is empty: expected at least one rule",
            );
        }
        for r in &p.value.rules {
            let here = Origin::at(file, r.referenced);
            let name = &r.value.name;
            if let Err(m) = types::check_name(&name.value) {
                cx.err_at(file, name, m);
            } else if let Some(first) = names.get(&name.value) {
                cx.err_at(
                    file,
                    name,
                    format!(
                        "duplicate rule name {:?}: first defined at {first}",
                        name.value
                    ),
                );
            } else {
                names.insert(name.value.clone(), Origin::at(file, name.referenced));
            }
            if let Some((first, at)) = &catch_all {
                cx.err(here.clone(), format!("rule {:?} can never match: rule {first:?} at {at} matches every call before it", name.value));
            }
            if let Some(rule) = rule(cx, file, r, trunks, trunk_names) {
                if rule.trunks.is_empty()
                    && rule.called.is_none()
                    && rule.caller.is_none()
                    && catch_all.is_none()
                {
                    catch_all = Some((rule.name.clone(), here));
                }
                rules.push(rule);
            }
        }
    }
    rules
}

fn rule(
    cx: &mut Ctx<'_>,
    file: &Path,
    r: &Spanned<raw::Rule>,
    trunks: &[Trunk],
    trunk_names: &[String],
) -> Option<Rule> {
    let v = &r.value;
    let before = cx.errors.len();
    let (mut rule_trunks, mut called, mut caller) = (Vec::new(), None, None);
    let mut broken = false;
    if let Some(m) = &v.matcher {
        for t in &m.value.trunks {
            match trunks.iter().find(|x| x.name == t.value) {
                // Defined but invalid: its own errors are already reported.
                None if trunk_names.contains(&t.value) => broken = true,
                None => cx.err_at(file, t, format!("unknown trunk {:?}: expected one of the trunks defined in the trunks directory", t.value)),
                Some(x) if x.inbound.is_none() => cx.err_at(file, t, format!("trunk {:?} has no inbound section, so no call arrives through it", t.value)),
                Some(_) => rule_trunks.push(t.value.clone()),
            }
        }
        called = m
            .value
            .called
            .as_ref()
            .and_then(|c| cx.parse(file, c, types::parse_number_pattern));
        caller = m
            .value
            .caller
            .as_ref()
            .and_then(|c| cx.parse(file, c, types::parse_number_pattern));
    }
    let action = match (&v.room, &v.reject) {
        (Some(_), Some(rej)) => {
            cx.err_at(file, rej, "a rule has either room or reject, not both");
            None
        }
        (None, None) => {
            cx.err_at(
                file,
                r,
                "a rule needs room (where to send the call) or reject (a SIP status)",
            );
            None
        }
        (None, Some(rej)) => {
            let join_only: [(&str, bool); 7] = [
                ("pin", v.pin.is_some()),
                ("participant", v.participant.is_some()),
                ("agents", !v.agents.is_empty()),
                ("answer", v.answer.is_some()),
                ("ringing_timeout", v.ringing_timeout.is_some()),
                ("early_media", v.early_media.is_some()),
                ("hide_phone_number", v.hide_phone_number.is_some()),
            ];
            for (key, set) in join_only {
                if set {
                    cx.err_at(
                        file,
                        rej,
                        format!("{key} applies only to rules with room, not to reject rules"),
                    );
                }
            }
            let status = rej.value.status.value;
            if !(400..=699).contains(&status) {
                cx.err_at(file, &rej.value.status, format!("invalid reject status {status}: expected a SIP failure status from 400 to 699"));
            }
            let reason = rej.value.reason.as_ref().map(|s| s.value.clone());
            if let Some(s) = rej
                .value
                .reason
                .as_ref()
                .filter(|s| s.value.contains(['\r', '\n']))
            {
                cx.err_at(file, s, "reason contains a line break");
            }
            Some(RuleAction::Reject { status, reason })
        }
        (Some(room), None) => join_room(cx, file, v, room).map(|j| RuleAction::Join(Box::new(j))),
    };
    if broken || cx.errors.len() != before {
        return None;
    }
    Some(Rule {
        name: v.name.value.clone(),
        file: file.to_path_buf(),
        trunks: rule_trunks,
        called,
        caller,
        action: action?,
    })
}

fn join_room(
    cx: &mut Ctx<'_>,
    file: &Path,
    v: &raw::Rule,
    room: &Spanned<String>,
) -> Option<JoinRoom> {
    let room = cx.parse(file, room, types::parse_template);
    let pin = v.pin.as_ref().and_then(|p| {
        cx.parse(file, p, |s| {
            if !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_digit()) {
                Ok(s.to_string())
            } else {
                Err(format!("invalid pin {s:?}: expected 1 to 16 digits"))
            }
        })
    });
    let part = v.participant.as_ref().map(|p| &p.value);
    let identity = cx.parse_or(
        file,
        part.and_then(|p| p.identity.as_ref()),
        defaults::RULE_IDENTITY,
        types::parse_template,
    );
    let name = cx.parse_or(
        file,
        part.and_then(|p| p.name.as_ref()),
        defaults::RULE_NAME,
        types::parse_template,
    );
    let metadata = part
        .and_then(|p| p.metadata.as_ref())
        .map(|m| m.value.clone());
    let mut attributes = Vec::new();
    for (k, val) in part.map(|p| &p.attributes).into_iter().flatten() {
        if k.is_empty() || k.starts_with("sip.") {
            cx.err_at(file, val, format!("attribute {k:?}: keys starting with \"sip.\" are set by Roomline; choose another key"));
        } else if let Some(t) = cx.parse(file, val, types::parse_template) {
            attributes.push((k.clone(), t));
        }
    }
    let mut agents = Vec::new();
    for a in &v.agents {
        if a.value.name.value.trim().is_empty() {
            cx.err_at(file, &a.value.name, "agent name is empty");
        } else {
            agents.push(AgentDispatch {
                name: a.value.name.value.clone(),
                metadata: a.value.metadata.as_ref().map(|m| m.value.clone()),
            });
        }
    }
    let answer = cx.parse_or(
        file,
        v.answer.as_ref(),
        defaults::RULE_ANSWER,
        |s| match s {
            "on_join" => Ok(AnswerMode::OnJoin),
            "on_first_track" => Ok(AnswerMode::OnFirstTrack),
            _ => Err(format!(
                "invalid answer {s:?}: expected on_join or on_first_track"
            )),
        },
    );
    let ringing_timeout = cx.duration_or(
        file,
        v.ringing_timeout.as_ref(),
        defaults::RULE_RINGING_TIMEOUT,
    );
    let early_media = v
        .early_media
        .as_ref()
        .map_or(defaults::RULE_EARLY_MEDIA, |e| e.value);
    let pin = match (&v.pin, pin) {
        (Some(_), None) => return None,
        (_, p) => p,
    };
    Some(JoinRoom {
        room: room?,
        pin,
        identity: identity?,
        name: name?,
        metadata,
        attributes,
        agents,
        answer: answer?,
        ringing_timeout: ringing_timeout?,
        early_media,
        hide_phone_number: v.hide_phone_number.as_ref().is_some_and(|h| h.value),
    })
}
