//! Rules that relate several fields of one object, which an OpenAPI schema cannot express.
//!
//! The admission webhook and the standalone loader run these; references between objects (a
//! Queue naming a missing CallCenter, a duplicate extension) need the other objects and are
//! checked by the operator, which reports them as status conditions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use chrono::{NaiveDate, NaiveTime};

use crate::callcenter::{
    BusinessHours, CallCenterSpec, FeatureCodes, HaMode, Route, RouteAction, check_scale_request,
};
use crate::queue::{OverflowAction, QueueSpec};
use crate::seat::SeatSpec;

/// One rule a field breaks, with the field's path (`spec.rtp.maxPort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every rule an object breaks; empty when it is valid.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when there is no error, so callers can use `?`.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// Reports every key that an earlier item already had, at the field `field(index)`.
fn check_unique<T: Ord + fmt::Debug>(
    keys: impl IntoIterator<Item = T>,
    field: impl Fn(usize) -> String,
    errs: &mut FieldErrors,
) {
    let mut seen = BTreeSet::new();
    for (i, key) in keys.into_iter().enumerate() {
        let message = format!("Duplicate value: {key:?}");
        if !seen.insert(key) {
            errs.push(field(i), message);
        }
    }
}

/// Checks a CallCenter spec.
pub fn call_center(spec: &CallCenterSpec) -> FieldErrors {
    let mut errs = FieldErrors::default();

    let rtp = &spec.rtp;
    if rtp.min_port >= rtp.max_port {
        errs.push(
            "spec.rtp.maxPort",
            format!(
                "Invalid value: {}: must be above spec.rtp.minPort ({})",
                rtp.max_port, rtp.min_port
            ),
        );
    }
    for (field, port) in [
        ("spec.sip.udpPort", spec.sip.udp_port),
        ("spec.sip.tcpPort", spec.sip.tcp_port),
    ] {
        if (rtp.min_port..=rtp.max_port).contains(&port) {
            errs.push(
                field,
                format!(
                    "Invalid value: {port}: overlaps the RTP port range {}-{}",
                    rtp.min_port, rtp.max_port
                ),
            );
        }
    }
    if let Some(addr) = &spec.sip.advertised_address
        && addr.contains(':')
        && addr.parse::<IpAddr>().is_err()
    {
        errs.push(
            "spec.sip.advertisedAddress",
            format!("Invalid value: {addr:?}: not a host name or IP address"),
        );
    }

    check_unique(&spec.codecs, |i| format!("spec.codecs[{i}]"), &mut errs);
    if spec.nodes.host_network {
        // The node runs as non-root; in the host's network namespace nothing lets it bind
        // below 1024 (the pod-network case uses a namespaced sysctl).
        for (field, port) in [
            ("spec.sip.udpPort", spec.sip.udp_port),
            ("spec.sip.tcpPort", spec.sip.tcp_port),
        ] {
            if port < 1024 {
                errs.push(
                    field,
                    format!("Invalid value: {port}: with spec.nodes.hostNetwork the SIP ports must be 1024 or above"),
                );
            }
        }
    }

    let ha = &spec.high_availability;
    if ha.renew_interval_seconds >= ha.lease_duration_seconds {
        errs.push(
            "spec.highAvailability.renewIntervalSeconds",
            format!(
                "Invalid value: {}: must be below leaseDurationSeconds ({})",
                ha.renew_interval_seconds, ha.lease_duration_seconds
            ),
        );
    }
    if ha.mode == HaMode::HotStandby && ha.lease_duration_seconds < 2 * ha.renew_interval_seconds {
        errs.push(
            "spec.highAvailability.leaseDurationSeconds",
            format!(
                "Invalid value: {}: with HotStandby it must be at least twice renewIntervalSeconds ({}), \
                 or one late renewal causes a failover",
                ha.lease_duration_seconds, ha.renew_interval_seconds
            ),
        );
    }

    check_trunks(spec, &mut errs);

    let menus: BTreeSet<&str> = spec.ivr_menus.iter().map(|m| m.name.as_str()).collect();
    check_unique(
        spec.entry_points.iter().map(|e| e.number.as_str()),
        |i| format!("spec.entryPoints[{i}].number"),
        &mut errs,
    );
    for (i, entry) in spec.entry_points.iter().enumerate() {
        let path = format!("spec.entryPoints[{i}].route");
        check_route(&entry.route, &path, &menus, &mut errs);
    }

    check_unique(
        spec.ivr_menus.iter().map(|m| m.name.as_str()),
        |i| format!("spec.ivrMenus[{i}].name"),
        &mut errs,
    );
    for (i, menu) in spec.ivr_menus.iter().enumerate() {
        let path = format!("spec.ivrMenus[{i}]");
        let prompts = [
            ("prompt", Some(&menu.prompt)),
            ("invalidPrompt", menu.invalid_prompt.as_ref()),
            ("timeoutPrompt", menu.timeout_prompt.as_ref()),
        ];
        for (field, prompt) in prompts {
            if let Some(p) = prompt {
                check_prompt(p, &format!("{path}.{field}"), &mut errs);
            }
        }
        check_unique(
            menu.options.iter().map(|o| o.digit.as_str()),
            |j| format!("{path}.options[{j}].digit"),
            &mut errs,
        );
        for (j, option) in menu.options.iter().enumerate() {
            let opath = format!("{path}.options[{j}].route");
            check_route(&option.route, &opath, &menus, &mut errs);
        }
        if let Some(route) = &menu.on_failure {
            check_route(route, &format!("{path}.onFailure"), &menus, &mut errs);
        }
        if let Some(collect) = &menu.collect_pin {
            if !menu.options.is_empty() {
                errs.push(
                    format!("{path}.options"),
                    "Forbidden: a menu that collects a PIN (collectPin) takes no single-key options",
                );
            }
            check_route(
                &collect.on_valid,
                &format!("{path}.collectPin.onValid"),
                &menus,
                &mut errs,
            );
        }
        if let Some(route) = &menu.after_hours {
            check_route(route, &format!("{path}.afterHours"), &menus, &mut errs);
            if spec.business_hours.is_none() {
                errs.push(
                    format!("{path}.afterHours"),
                    "Invalid value: an after-hours route needs spec.businessHours",
                );
            }
        }
    }

    if let Some(hours) = &spec.business_hours {
        check_business_hours(hours, &mut errs);
    }
    check_feature_codes(&spec.feature_codes, &mut errs);
    check_prompt(
        &spec.voicemail.greeting,
        "spec.voicemail.greeting",
        &mut errs,
    );

    let size = &spec.recording.storage_size.0;
    if !is_quantity(size) {
        errs.push(
            "spec.recording.storageSize",
            format!("Invalid value: {size:?}: not a storage quantity such as 10Gi"),
        );
    }
    errs
}

fn check_trunks(spec: &CallCenterSpec, errs: &mut FieldErrors) {
    check_unique(
        spec.trunks.iter().map(|t| t.name.as_str()),
        |i| format!("spec.trunks[{i}].name"),
        errs,
    );
    // The scale subresource sizes the first trunk, within its bounds.
    if let Some(requested) = spec.trunk_channels {
        match spec.trunks.first() {
            None => errs.push(
                "spec.trunkChannels",
                format!("Invalid value: {requested}: sets the channels of spec.trunks[0], and there is no trunk"),
            ),
            Some(trunk) => {
                if let Err(refused) = check_scale_request(requested, &trunk.channels) {
                    errs.push(
                        "spec.trunkChannels",
                        format!("Invalid value: {requested}: {refused} of spec.trunks[0] ({})", trunk.name),
                    );
                }
            }
        }
    }
    let mut inbound: BTreeMap<&str, usize> = BTreeMap::new();
    let mut prefixes: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, trunk) in spec.trunks.iter().enumerate() {
        let path = format!("spec.trunks[{i}]");
        let ch = &trunk.channels;
        if ch.min_channels > ch.max_channels {
            errs.push(
                format!("{path}.channels.minChannels"),
                format!(
                    "Invalid value: {}: must not be above maxChannels ({})",
                    ch.min_channels, ch.max_channels
                ),
            );
        } else if ch.limit < ch.min_channels || ch.limit > ch.max_channels {
            errs.push(
                format!("{path}.channels.limit"),
                format!(
                    "Invalid value: {}: must be within minChannels..maxChannels ({}..{})",
                    ch.limit, ch.min_channels, ch.max_channels
                ),
            );
        }
        if !ch.target_blocking.is_finite() || ch.target_blocking <= 0.0 || ch.target_blocking > 0.5
        {
            errs.push(
                format!("{path}.channels.targetBlocking"),
                format!("Invalid value: {}: must be in (0, 0.5]", ch.target_blocking),
            );
        }
        for (j, source) in trunk.allowed_sources.iter().enumerate() {
            if !is_ip_or_cidr(source) {
                errs.push(
                    format!("{path}.allowedSources[{j}]"),
                    format!("Invalid value: {source:?}: not an IP address or CIDR block"),
                );
            }
        }
        for (j, number) in trunk.inbound_numbers.iter().enumerate() {
            if let Some(first) = inbound.insert(number.as_str(), i) {
                errs.push(
                    format!("{path}.inboundNumbers[{j}]"),
                    format!(
                        "Duplicate value: {number:?} is also delivered by spec.trunks[{first}]"
                    ),
                );
            }
        }
        for (j, rule) in trunk.dial_prefixes.iter().enumerate() {
            if let Some(first) = prefixes.insert(rule.prefix.as_str(), i) {
                errs.push(
                    format!("{path}.dialPrefixes[{j}].prefix"),
                    format!(
                        "Duplicate value: {:?} already selects spec.trunks[{first}]",
                        rule.prefix
                    ),
                );
            }
            if usize::from(rule.strip) > rule.prefix.len() {
                errs.push(
                    format!("{path}.dialPrefixes[{j}].strip"),
                    format!(
                        "Invalid value: {}: cannot strip more digits than the prefix {:?} has",
                        rule.strip, rule.prefix
                    ),
                );
            }
        }
    }
}

/// Feature codes must be distinct and none may start another (the node acts on the first
/// match), and NotReady reason digits are unique.
fn check_feature_codes(codes: &FeatureCodes, errs: &mut FieldErrors) {
    let named = [
        ("login", &codes.login),
        ("logout", &codes.logout),
        ("ready", &codes.ready),
        ("notReady", &codes.not_ready),
    ];
    for (i, (field, code)) in named.iter().enumerate() {
        for (other_field, other) in &named[i + 1..] {
            if code.starts_with(other.as_str()) || other.starts_with(code.as_str()) {
                errs.push(
                    format!("spec.featureCodes.{other_field}"),
                    format!(
                        "Invalid value: {other:?}: clashes with spec.featureCodes.{field} ({code:?}); \
                         no code may equal or begin another"
                    ),
                );
            }
        }
    }
    check_unique(
        codes.not_ready_reasons.iter().map(|r| r.digit.as_str()),
        |i| format!("spec.featureCodes.notReadyReasons[{i}].digit"),
        errs,
    );
    check_unique(
        codes.not_ready_reasons.iter().map(|r| r.reason.as_str()),
        |i| format!("spec.featureCodes.notReadyReasons[{i}].reason"),
        errs,
    );
    if let Some(i) = codes
        .not_ready_reasons
        .iter()
        .position(|r| r.reason == NO_ANSWER_REASON)
    {
        errs.push(
            format!("spec.featureCodes.notReadyReasons[{i}].reason"),
            format!(
                "Invalid value: {NO_ANSWER_REASON:?} is set by the node after an unanswered offer"
            ),
        );
    }
}

/// The NotReady reason the node sets when an agent lets an offered call ring out.
pub const NO_ANSWER_REASON: &str = "no-answer";

fn check_route(route: &Route, path: &str, menus: &BTreeSet<&str>, errs: &mut FieldErrors) {
    match (route.action, &route.target) {
        (RouteAction::Menu | RouteAction::Queue | RouteAction::Seat, None) => errs.push(
            format!("{path}.target"),
            format!("Required value: action {:?} needs a target", route.action),
        ),
        (RouteAction::Menu, Some(menu)) if !menus.contains(menu.as_str()) => errs.push(
            format!("{path}.target"),
            format!("Not found: {menu:?} is not one of spec.ivrMenus"),
        ),
        (RouteAction::Hangup, Some(_)) => errs.push(
            format!("{path}.target"),
            "Forbidden: action Hangup takes no target",
        ),
        _ => {}
    }
}

fn check_prompt(prompt: &str, path: &str, errs: &mut FieldErrors) {
    if prompt
        .split('/')
        .any(|segment| segment == ".." || segment.is_empty())
    {
        errs.push(
            path,
            format!("Invalid value: {prompt:?}: must be a relative path inside the prompt store"),
        );
    }
}

fn check_business_hours(hours: &BusinessHours, errs: &mut FieldErrors) {
    if hours.time_zone.parse::<chrono_tz::Tz>().is_err() {
        errs.push(
            "spec.businessHours.timeZone",
            format!(
                "Invalid value: {:?}: not an IANA time zone",
                hours.time_zone
            ),
        );
    }
    let mut days_seen = BTreeMap::new();
    for (i, span) in hours.weekly.iter().enumerate() {
        let path = format!("spec.businessHours.weekly[{i}]");
        let open = parse_clock(&span.open);
        let close = parse_clock(&span.close);
        match (open, close) {
            (Some(o), Some(c)) if o >= c => errs.push(
                format!("{path}.close"),
                format!(
                    "Invalid value: {:?}: must be after open ({:?})",
                    span.close, span.open
                ),
            ),
            (None, _) => errs.push(
                format!("{path}.open"),
                format!("Invalid value: {:?}", span.open),
            ),
            (_, None) => errs.push(
                format!("{path}.close"),
                format!("Invalid value: {:?}", span.close),
            ),
            _ => {}
        }
        if let (Some(o), Some(c)) = (open, close) {
            for day in &span.days {
                let spans: &mut Vec<(u32, u32, usize)> = days_seen.entry(*day as u8).or_default();
                if let Some((_, _, other)) = spans.iter().find(|(so, sc, _)| o < *sc && *so < c) {
                    errs.push(
                        format!("{path}.days"),
                        format!(
                            "Invalid value: {day:?} overlaps spec.businessHours.weekly[{other}]"
                        ),
                    );
                }
                spans.push((o, c, i));
            }
        }
    }
    let mut dates = BTreeSet::new();
    for (i, holiday) in hours.holidays.iter().enumerate() {
        let path = format!("spec.businessHours.holidays[{i}].date");
        if NaiveDate::parse_from_str(&holiday.date, "%Y-%m-%d").is_err() {
            errs.push(
                &path,
                format!("Invalid value: {:?}: not a calendar date", holiday.date),
            );
        } else if !dates.insert(holiday.date.as_str()) {
            errs.push(&path, format!("Duplicate value: {:?}", holiday.date));
        }
    }
}

/// Minutes since midnight of `HH:MM`, with `24:00` as 1440.
fn parse_clock(s: &str) -> Option<u32> {
    if s == "24:00" {
        return Some(24 * 60);
    }
    let t = NaiveTime::parse_from_str(s, "%H:%M").ok()?;
    use chrono::Timelike;
    Some(t.hour() * 60 + t.minute())
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((addr, bits)) => match (addr.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
    }
}

fn is_quantity(s: &str) -> bool {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    !number.is_empty()
        && number.parse::<f64>().is_ok_and(|v| v > 0.0)
        && [
            "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
        ]
        .contains(&suffix)
}

/// Checks a Queue spec.
pub fn queue(spec: &QueueSpec, own_name: &str) -> FieldErrors {
    let mut errs = FieldErrors::default();
    check_unique(
        spec.required_skills.iter().map(|s| s.name.as_str()),
        |i| format!("spec.requiredSkills[{i}].name"),
        &mut errs,
    );
    let strictest = spec.required_skills.iter().map(|s| s.min_proficiency).max();
    let mut previous: Option<u32> = None;
    let last = spec.overflow.len().saturating_sub(1);
    for (i, step) in spec.overflow.iter().enumerate() {
        let path = format!("spec.overflow[{i}]");
        if let Some(prev) = previous
            && step.after_seconds <= prev
        {
            errs.push(
                    format!("{path}.afterSeconds"),
                    format!(
                        "Invalid value: {}: steps must come in increasing afterSeconds (previous step: {prev})",
                        step.after_seconds
                    ),
                );
        }
        previous = Some(step.after_seconds);
        if step.after_seconds >= spec.max_wait_seconds {
            errs.push(
                format!("{path}.afterSeconds"),
                format!(
                    "Invalid value: {}: must be below spec.maxWaitSeconds ({})",
                    step.after_seconds, spec.max_wait_seconds
                ),
            );
        }
        match step.action {
            OverflowAction::RelaxSkills => {
                if spec.required_skills.is_empty() {
                    errs.push(
                        format!("{path}.action"),
                        "Invalid value: RelaxSkills needs spec.requiredSkills",
                    );
                }
                if let (Some(min), Some(strictest)) = (step.min_proficiency, strictest)
                    && min >= strictest
                {
                    errs.push(
                            format!("{path}.minProficiency"),
                            format!("Invalid value: {min}: must be below the strictest requirement ({strictest})"),
                        );
                }
                if step.queue.is_some() {
                    errs.push(
                        format!("{path}.queue"),
                        "Forbidden: only action Queue takes a queue",
                    );
                }
            }
            OverflowAction::Queue => match &step.queue {
                None => errs.push(
                    format!("{path}.queue"),
                    "Required value: action Queue needs a queue",
                ),
                Some(q) if q == own_name => errs.push(
                    format!("{path}.queue"),
                    format!("Invalid value: {q:?}: a queue cannot overflow to itself"),
                ),
                Some(_) => {}
            },
            OverflowAction::Voicemail => {
                if step.queue.is_some() {
                    errs.push(
                        format!("{path}.queue"),
                        "Forbidden: only action Queue takes a queue",
                    );
                }
            }
        }
        if matches!(
            step.action,
            OverflowAction::Queue | OverflowAction::Voicemail
        ) && i != last
        {
            errs.push(
                format!("{path}.action"),
                format!("Invalid value: {:?}: the caller leaves the queue here, so it must be the last step", step.action),
            );
        }
        if step.min_proficiency.is_some() && step.action != OverflowAction::RelaxSkills {
            errs.push(
                format!("{path}.minProficiency"),
                "Forbidden: only action RelaxSkills takes minProficiency",
            );
        }
    }
    check_prompt(&spec.music_on_hold, "spec.musicOnHold", &mut errs);
    if let Some(survey) = &spec.survey {
        check_prompt(&survey.prompt, "spec.survey.prompt", &mut errs);
        if let Some(thanks) = &survey.thank_you_prompt {
            check_prompt(thanks, "spec.survey.thankYouPrompt", &mut errs);
        }
    }
    errs
}

/// Checks a Seat spec.
pub fn seat(spec: &SeatSpec) -> FieldErrors {
    let mut errs = FieldErrors::default();
    check_unique(
        spec.queues.iter().map(|q| q.name.as_str()),
        |i| format!("spec.queues[{i}].name"),
        &mut errs,
    );
    check_unique(
        spec.skills.iter().map(|s| s.name.as_str()),
        |i| format!("spec.skills[{i}].name"),
        &mut errs,
    );
    errs
}

#[cfg(test)]
mod tests;
