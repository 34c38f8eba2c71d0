use super::*;
use crate::callcenter::PinCollection;
use crate::common::SecretKeyReference;
use crate::{CallCenterSpec, QueueSpec, SeatSpec};
use proptest::prelude::*;

fn center(yaml: &str) -> CallCenterSpec {
    serde_yaml::from_str(yaml).expect("test spec parses")
}

const BASE: &str = r#"
sip: {domain: cc.example.edu}
trunks:
- name: pstn
  peer: {host: 192.0.2.10}
  inboundNumbers: ["+862150000000"]
  dialPrefixes: [{prefix: "0", strip: 1}]
entryPoints:
- number: "+862150000000"
  route: {action: Menu, target: main}
ivrMenus:
- name: main
  prompt: welcome.wav
  options:
  - {digit: "1", route: {action: Queue, target: service}}
  - {digit: "0", route: {action: Seat, target: duty}}
  afterHours: {action: Seat, target: duty}
businessHours:
  timeZone: Asia/Shanghai
  weekly: [{days: [Monday, Tuesday], open: "08:30", close: "17:30"}]
  holidays: [{date: "2026-10-01"}]
"#;

fn fields(errs: &FieldErrors) -> Vec<&str> {
    errs.0.iter().map(|e| e.field.as_str()).collect()
}

/// Applies `edit` to the valid base spec and returns the fields the validator names.
fn broken(edit: impl FnOnce(&mut CallCenterSpec)) -> Vec<String> {
    let mut spec = center(BASE);
    edit(&mut spec);
    call_center(&spec).0.into_iter().map(|e| e.field).collect()
}

#[test]
fn the_base_spec_is_valid_and_defaults_are_filled_in() {
    let spec = center(BASE);
    assert_eq!(call_center(&spec), FieldErrors::default());
    assert_eq!(spec.rtp.min_port, 10000);
    assert_eq!(spec.trunks[0].channels.limit, 30);
    assert_eq!(spec.sip.udp_port, 5060);
}

#[test]
fn a_scale_request_must_lie_within_the_first_trunks_bounds() {
    let scaled = |n: u32, min: u32, max: u32| {
        let mut spec = center(BASE);
        spec.trunks[0].channels.min_channels = min;
        spec.trunks[0].channels.max_channels = max;
        spec.trunks[0].channels.limit = min;
        spec.trunk_channels = Some(n);
        call_center(&spec)
    };
    assert!(scaled(5, 5, 60).is_empty());
    assert!(scaled(60, 5, 60).is_empty());
    let errs = scaled(61, 5, 60);
    assert_eq!(fields(&errs), ["spec.trunkChannels"]);
    assert_eq!(
        errs.0[0].message,
        "Invalid value: 61: cannot set the trunk to 61 channels: the limit must stay within \
         minChannels 5 and maxChannels 60 of spec.trunks[0] (pstn)"
    );
    assert_eq!(fields(&scaled(4, 5, 60)), ["spec.trunkChannels"]);
    // Without a trunk there is nothing to size.
    let mut spec = center(BASE);
    spec.trunks.clear();
    spec.entry_points.clear();
    spec.trunk_channels = Some(10);
    let errs = call_center(&spec);
    assert!(fields(&errs).contains(&"spec.trunkChannels"), "{errs}");
}

type Edit = Box<dyn FnOnce(&mut CallCenterSpec)>;

#[test]
fn every_cross_field_rule_names_its_field() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "spec.rtp.maxPort",
            Box::new(|s| {
                s.rtp.min_port = 20000;
                s.rtp.max_port = 10000
            }),
        ),
        (
            "spec.rtp.maxPort",
            Box::new(|s| {
                s.rtp.min_port = 20000;
                s.rtp.max_port = 20000
            }),
        ),
        ("spec.sip.udpPort", Box::new(|s| s.sip.udp_port = 12000)),
        (
            "spec.sip.tcpPort",
            Box::new(|s| {
                s.nodes.host_network = true;
                s.sip.tcp_port = 506
            }),
        ),
        (
            "spec.codecs[1]",
            Box::new(|s| s.codecs = vec![crate::callcenter::Codec::Pcmu; 2]),
        ),
        (
            "spec.highAvailability.renewIntervalSeconds",
            Box::new(|s| s.high_availability.renew_interval_seconds = 6),
        ),
        (
            "spec.highAvailability.leaseDurationSeconds",
            Box::new(|s| {
                s.high_availability.mode = HaMode::HotStandby;
                s.high_availability.lease_duration_seconds = 5;
                s.high_availability.renew_interval_seconds = 3;
            }),
        ),
        (
            "spec.trunks[0].channels.limit",
            Box::new(|s| s.trunks[0].channels.limit = 31),
        ),
        (
            "spec.trunks[0].channels.minChannels",
            Box::new(|s| s.trunks[0].channels.min_channels = 40),
        ),
        (
            "spec.trunks[0].allowedSources[0]",
            Box::new(|s| s.trunks[0].allowed_sources = vec!["10.0.0.0/33".into()]),
        ),
        (
            "spec.trunks[1].name",
            Box::new(|s| {
                let mut t = s.trunks[0].clone();
                t.inbound_numbers.clear();
                t.dial_prefixes.clear();
                s.trunks.push(t)
            }),
        ),
        (
            "spec.trunks[1].inboundNumbers[0]",
            Box::new(|s| {
                let mut t = s.trunks[0].clone();
                t.name = "b".into();
                t.dial_prefixes.clear();
                s.trunks.push(t)
            }),
        ),
        (
            "spec.trunks[0].dialPrefixes[0].strip",
            Box::new(|s| s.trunks[0].dial_prefixes[0].strip = 2),
        ),
        (
            "spec.entryPoints[0].route.target",
            Box::new(|s| s.entry_points[0].route.target = Some("nope".into())),
        ),
        (
            "spec.entryPoints[1].number",
            Box::new(|s| s.entry_points.push(s.entry_points[0].clone())),
        ),
        (
            "spec.ivrMenus[0].options[1].digit",
            Box::new(|s| s.ivr_menus[0].options[1].digit = "1".into()),
        ),
        (
            "spec.ivrMenus[0].options[0].route.target",
            Box::new(|s| s.ivr_menus[0].options[0].route.target = None),
        ),
        (
            "spec.ivrMenus[0].afterHours",
            Box::new(|s| s.business_hours = None),
        ),
        (
            "spec.ivrMenus[0].prompt",
            Box::new(|s| s.ivr_menus[0].prompt = "../etc/x.wav".into()),
        ),
        (
            "spec.ivrMenus[1].name",
            Box::new(|s| s.ivr_menus.push(s.ivr_menus[0].clone())),
        ),
        (
            "spec.businessHours.timeZone",
            Box::new(|s| s.business_hours.as_mut().unwrap().time_zone = "Mars/Olympus".into()),
        ),
        (
            "spec.businessHours.weekly[0].close",
            Box::new(|s| s.business_hours.as_mut().unwrap().weekly[0].close = "08:00".into()),
        ),
        (
            "spec.businessHours.weekly[1].days",
            Box::new(|s| {
                let h = s.business_hours.as_mut().unwrap();
                let mut w = h.weekly[0].clone();
                w.open = "17:00".into();
                w.close = "20:00".into();
                h.weekly.push(w)
            }),
        ),
        (
            "spec.businessHours.holidays[0].date",
            Box::new(|s| s.business_hours.as_mut().unwrap().holidays[0].date = "2026-02-30".into()),
        ),
        (
            "spec.recording.storageSize",
            Box::new(|s| s.recording.storage_size.0 = "lots".into()),
        ),
        (
            "spec.featureCodes.ready",
            Box::new(|s| s.feature_codes.ready = "*2".into()),
        ),
        (
            "spec.featureCodes.notReady",
            Box::new(|s| s.feature_codes.not_ready = s.feature_codes.login.clone()),
        ),
        (
            "spec.featureCodes.notReadyReasons[1].digit",
            Box::new(|s| s.feature_codes.not_ready_reasons[1].digit = "1".into()),
        ),
        (
            "spec.featureCodes.notReadyReasons[0].reason",
            Box::new(|s| s.feature_codes.not_ready_reasons[0].reason = "no-answer".into()),
        ),
        (
            "spec.ivrMenus[0].options",
            Box::new(|s| {
                s.ivr_menus[0].collect_pin = Some(PinCollection {
                    pins: SecretKeyReference {
                        name: "member-pins".into(),
                        key: "pins".into(),
                    },
                    max_digits: 6,
                    priority_boost: 10,
                    on_valid: Route {
                        action: RouteAction::Queue,
                        target: Some("service".into()),
                    },
                })
            }),
        ),
        (
            "spec.ivrMenus[0].collectPin.onValid.target",
            Box::new(|s| {
                s.ivr_menus[0].options.clear();
                s.ivr_menus[0].collect_pin = Some(PinCollection {
                    pins: SecretKeyReference {
                        name: "member-pins".into(),
                        key: "pins".into(),
                    },
                    max_digits: 6,
                    priority_boost: 10,
                    on_valid: Route {
                        action: RouteAction::Menu,
                        target: Some("nowhere".into()),
                    },
                })
            }),
        ),
        (
            "spec.voicemail.greeting",
            Box::new(|s| s.voicemail.greeting = "../etc/passwd.wav".into()),
        ),
    ];
    for (field, edit) in cases {
        let got = broken(edit);
        assert!(
            got.iter().any(|f| f == field),
            "expected an error on {field}, got {got:?}"
        );
    }
}

#[test]
fn back_to_back_opening_hours_do_not_overlap() {
    let got = broken(|s| {
        let h = s.business_hours.as_mut().expect("base has hours");
        let mut w = h.weekly[0].clone();
        w.open = "17:30".into();
        w.close = "24:00".into();
        h.weekly.push(w);
    });
    assert!(got.is_empty(), "{got:?}");
}

fn queue_spec(yaml: &str) -> QueueSpec {
    serde_yaml::from_str(yaml).expect("test queue parses")
}

#[test]
fn queue_overflow_rules() {
    let ok = queue_spec(
        r#"
callCenter: campus
requiredSkills: [{name: billing, minProficiency: 3}]
overflow:
- {afterSeconds: 30, action: RelaxSkills, minProficiency: 1}
- {afterSeconds: 60, action: Queue, queue: general}
"#,
    );
    assert!(
        queue(&ok, "billing").is_empty(),
        "{}",
        queue(&ok, "billing")
    );

    let bad = queue_spec(
        r#"
callCenter: campus
maxWaitSeconds: 100
overflow:
- {afterSeconds: 60, action: Voicemail}
- {afterSeconds: 50, action: Queue, queue: billing, minProficiency: 2}
- {afterSeconds: 200, action: RelaxSkills}
"#,
    );
    let errs = queue(&bad, "billing");
    let f = fields(&errs);
    for want in [
        "spec.overflow[0].action",
        "spec.overflow[1].afterSeconds",
        "spec.overflow[1].queue",
        "spec.overflow[1].minProficiency",
        "spec.overflow[2].afterSeconds",
        "spec.overflow[2].action",
    ] {
        assert!(f.contains(&want), "missing {want} in {errs}");
    }
}

#[test]
fn seat_rejects_duplicate_memberships_and_skills() {
    let seat_spec: SeatSpec = serde_yaml::from_str(
        r#"
callCenter: campus
extension: "2001"
displayName: Agent
credentials: {name: seat-2001}
queues: [{name: service}, {name: service, tier: 2}]
skills: [{name: billing, proficiency: 3}, {name: billing, proficiency: 4}]
"#,
    )
    .expect("parses");
    let errs = seat(&seat_spec);
    assert_eq!(
        fields(&errs),
        vec!["spec.queues[1].name", "spec.skills[1].name"]
    );
}

proptest! {
    #[test]
    fn rtp_range_is_valid_exactly_when_min_is_below_max(min in 1024u16..=65534, max in 1025u16..=65535) {
        let mut spec = center(BASE);
        spec.rtp.min_port = min;
        spec.rtp.max_port = max;
        // Keep SIP off the range so only the range rule speaks.
        spec.sip.udp_port = 80;
        spec.sip.tcp_port = 80;
        let errs = call_center(&spec);
        prop_assert_eq!(errs.is_empty(), min < max, "{}", errs);
    }

    #[test]
    fn channel_limits_are_valid_exactly_when_ordered(min in 1u32..100, limit in 1u32..100, max in 1u32..100) {
        let mut spec = center(BASE);
        spec.trunks[0].channels.min_channels = min;
        spec.trunks[0].channels.limit = limit;
        spec.trunks[0].channels.max_channels = max;
        let errs = call_center(&spec);
        prop_assert_eq!(errs.is_empty(), min <= limit && limit <= max, "{}", errs);
    }

    #[test]
    fn scale_requests_are_valid_exactly_within_bounds(min in 1u32..100, extra in 0u32..100, wanted in 1u32..300) {
        let mut spec = center(BASE);
        let max = min + extra;
        spec.trunks[0].channels.min_channels = min;
        spec.trunks[0].channels.limit = min;
        spec.trunks[0].channels.max_channels = max;
        spec.trunk_channels = Some(wanted);
        let errs = call_center(&spec);
        prop_assert_eq!(errs.is_empty(), (min..=max).contains(&wanted), "{}", errs);
    }

    #[test]
    fn clock_times_parse_to_minutes(h in 0u32..24, m in 0u32..60) {
        prop_assert_eq!(parse_clock(&format!("{h:02}:{m:02}")), Some(h * 60 + m));
    }

    #[test]
    fn validation_never_panics_on_arbitrary_strings(s in ".{0,40}") {
        let mut spec = center(BASE);
        spec.business_hours.as_mut().unwrap().time_zone = s.clone();
        spec.business_hours.as_mut().unwrap().weekly[0].open = s.clone();
        spec.business_hours.as_mut().unwrap().holidays[0].date = s.clone();
        spec.trunks[0].allowed_sources = vec![s.clone()];
        spec.recording.storage_size.0 = s.clone();
        spec.ivr_menus[0].prompt = s;
        let _ = call_center(&spec);
    }
}
