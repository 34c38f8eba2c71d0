//! The call center end to end with real SIP peers: the `media-node` binary serves a call
//! center from manifests (standalone mode, the README's first command) and SIPp plays the
//! carrier's callers (pressing keys with RFC 4733 events) and the agents' phones (logging in
//! with feature codes, answering offered calls).

mod support;

use std::time::Duration;

use support::center::CenterNode;
use support::{free_port, free_rtp_range};

/// The test center: a carrier trunk from 127.0.0.2, entry `200` to the main menu (1: the
/// support queue, 2: the members' PIN menu, 9: voicemail), entry `300` straight to the queue,
/// and three seats (1001, 1002 in the queue; 1003 on duty after hours). The center is open
/// around the clock (UTC) except on `holiday` (`YYYY-MM-DD`); `queue` is the support Queue's
/// extra spec lines.
fn manifests(rtp: (u16, u16), holiday: Option<&str>, queue: &str) -> String {
    let holidays = holiday.map_or(String::new(), |d| {
        format!("{{date: \"{d}\", name: Test day}}")
    });
    let mut seats = String::new();
    for (ext, queues) in [
        ("1001", "[{name: support}]"),
        ("1002", "[{name: support}]"),
        ("1003", "[]"),
    ] {
        seats.push_str(&format!(
            "---\napiVersion: switchboard.dev/v1alpha1\nkind: Seat\nmetadata: {{name: agent-{ext}}}\n\
             spec:\n  callCenter: college\n  extension: \"{ext}\"\n  displayName: Agent {ext}\n  \
             credentials: {{name: seat-passwords, key: \"{ext}\"}}\n  queues: {queues}\n"
        ));
    }
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: seat-passwords}}
stringData: {{"1001": practice-1001, "1002": practice-1002, "1003": practice-1003}}
---
apiVersion: v1
kind: Secret
metadata: {{name: member-pins}}
stringData:
  pins: |
    1234
    7777
---
apiVersion: switchboard.dev/v1alpha1
kind: CallCenter
metadata: {{name: college}}
spec:
  sip: {{domain: localhost}}
  rtp: {{minPort: {min}, maxPort: {max}}}
  trunks:
  - name: carrier
    peer: {{host: 127.0.0.2}}
    allowedSources: ["127.0.0.2"]
  entryPoints:
  - {{number: "200", route: {{action: Menu, target: main}}}}
  - {{number: "300", route: {{action: Queue, target: support}}}}
  ivrMenus:
  - name: main
    prompt: campus/welcome.wav
    timeoutSeconds: 5
    maxRetries: 1
    options:
    - {{digit: "1", route: {{action: Queue, target: support}}}}
    - {{digit: "2", route: {{action: Menu, target: members}}}}
    - {{digit: "9", route: {{action: Voicemail}}}}
    afterHours: {{action: Seat, target: agent-1003}}
  - name: members
    prompt: campus/member-pin.wav
    timeoutSeconds: 5
    maxRetries: 1
    collectPin:
      pins: {{name: member-pins, key: pins}}
      maxDigits: 4
      priorityBoost: 10
      onValid: {{action: Queue, target: support}}
    onFailure: {{action: Queue, target: support}}
  businessHours:
    timeZone: UTC
    weekly:
    - {{days: [Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday], open: "00:00", close: "24:00"}}
    holidays: [{holidays}]
---
apiVersion: switchboard.dev/v1alpha1
kind: Queue
metadata: {{name: support}}
spec:
  callCenter: college
  strategy: LongestIdle
  ringTimeoutSeconds: 5
  announcements: {{position: true, estimatedWait: true, everySeconds: 10}}
{queue}
{seats}"#,
        min = rtp.0,
        max = rtp.1,
    )
}

#[test]
fn a_caller_chooses_the_queue_in_the_ivr_and_the_longest_idle_agent_answers() {
    let node = CenterNode::start(&manifests(free_rtp_range(60), None, ""));
    // 1001 logs in first: it has been Ready longest when the caller arrives.
    let port_1001 = node.log_in("1001");
    std::thread::sleep(Duration::from_millis(300));
    let port_1002 = node.log_in("1002");
    let agent = node.agent_answers("1001", port_1001, "seat-uas-answer.xml");
    let other = node.agent_answers("1002", port_1002, "seat-uas-answer.xml");

    let keys = "1";
    node.caller(
        "center-caller-bye.xml",
        "200",
        "+4930555001",
        keys,
        1000,
        3000,
    )
    .assert_ok("caller presses 1 and talks to an agent");
    agent.assert_ok("the longest-idle agent answers");
    drop(other);

    let cdrs = node.wait_cdrs(3);
    let call = cdrs
        .iter()
        .find(|c| c["to"] == "200")
        .unwrap_or_else(|| panic!("no CDR of the queue call in {cdrs:#?}"));
    assert_eq!(call["outcome"], "answered", "{call:#}");
    assert_eq!(call["seat"], "agent-1001", "{call:#}");
    assert_eq!(call["queue"], "support", "{call:#}");
    assert_eq!(call["ivrPath"], serde_json::json!(["main:1"]), "{call:#}");
    node.wait_for("1001 back to ready", || {
        node.agent_in("agent-1001", "ready")
    });
    assert!(node.agent_in("agent-1002", "ready"));
    assert_eq!(node.sample("switchboard_rtp_port_pairs_in_use"), Some(0.0));
    assert_eq!(node.sample("switchboard_prompts_missing"), Some(0.0));
    // A node alone (no HotStandby) is the active one.
    assert_eq!(
        node.sample("switchboard_node_role{role=\"active\"}"),
        Some(1.0)
    );
    assert_eq!(
        node.sample("switchboard_node_role{role=\"standby\"}"),
        Some(0.0)
    );
    assert_eq!(node.sample("switchboard_failovers_total"), Some(0.0));
}

/// Waits until the queue's 15-minute figure `name` reaches `value`.
fn queue_figure(node: &CenterNode, name: &str, value: f64) {
    let series = format!("switchboard_queue_{name}{{queue=\"support\",window=\"15m\"}}");
    node.wait_for(&series, || node.sample(&series) == Some(value));
}

#[test]
fn a_caller_who_hangs_up_while_queued_is_counted_as_abandoned() {
    let node = CenterNode::start(&manifests(free_rtp_range(20), None, ""));
    let keys = "#";
    // Nobody is logged in; the queue waits for an agent ("whenNoAgents: Wait").
    node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555002",
        keys,
        500,
        2500,
    )
    .assert_ok("caller waits, then hangs up");
    let cdrs = node.wait_cdrs(1);
    assert_eq!(cdrs[0]["outcome"], "abandoned", "{:#}", cdrs[0]);
    assert_eq!(cdrs[0]["queue"], "support", "{:#}", cdrs[0]);
    assert!(
        cdrs[0]["waitSeconds"].as_f64().is_some_and(|w| w >= 2.0),
        "{:#}",
        cdrs[0]
    );
    queue_figure(&node, "calls_offered", 1.0);
    queue_figure(&node, "calls_abandoned", 1.0);
    node.wait_for("nobody waiting", || {
        node.sample("switchboard_queue_calls_waiting{queue=\"support\"}") == Some(0.0)
    });
    node.wait_for("ports released", || {
        node.sample("switchboard_rtp_port_pairs_in_use") == Some(0.0)
    });
}

#[test]
fn an_agent_who_does_not_answer_goes_not_ready_and_the_next_agent_gets_the_call() {
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, ""));
    let port_1001 = node.log_in("1001");
    std::thread::sleep(Duration::from_millis(300));
    let port_1002 = node.log_in("1002");
    // 1001, offered first, only rings; after the 5 s ring timeout the call goes to 1002.
    let ringing = node.agent_answers("1001", port_1001, "call-uas-ring.xml");
    let answering = node.agent_answers("1002", port_1002, "seat-uas-answer.xml");
    let keys = "#";
    node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555003",
        keys,
        500,
        9000,
    )
    .assert_ok("caller is answered by the second agent");
    ringing.assert_ok("the first agent's phone was cancelled");
    answering.assert_ok("the second agent answered");
    let cdrs = node.wait_cdrs(3);
    let call = cdrs
        .iter()
        .find(|c| c["to"] == "300")
        .expect("the queue call's CDR");
    assert_eq!(call["seat"], "agent-1002", "{call:#}");
    assert_eq!(call["outcome"], "answered", "{call:#}");
    assert!(
        node.agent_in("agent-1001", "not_ready"),
        "ring-no-answer makes the agent NotReady"
    );
    node.wait_for("1002 ready again", || node.agent_in("agent-1002", "ready"));
    node.wait_for("ports released", || {
        node.sample("switchboard_rtp_port_pairs_in_use") == Some(0.0)
    });
}

#[test]
fn wrap_up_delays_the_next_offer_to_the_agent() {
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, "  wrapUpSeconds: 4"));
    let port = node.log_in("1001");
    let keys = "#";
    let agent = node.agent_answers("1001", port, "seat-uas-answer.xml");
    node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555004",
        keys,
        500,
        1500,
    )
    .assert_ok("first caller");
    agent.assert_ok("the agent answered the first caller");
    node.wait_for("the agent wraps up after the call", || {
        node.agent_in("agent-1001", "wrap_up")
    });
    // The second caller arrives during the wrap-up and is offered only after it.
    let agent = node.agent_answers("1001", port, "seat-uas-answer.xml");
    node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555005",
        keys,
        500,
        6000,
    )
    .assert_ok("second caller");
    agent.assert_ok("the agent answered the second caller");
    let cdrs = node.wait_cdrs(3);
    let second = cdrs
        .iter()
        .find(|c| c["from"] == "+4930555005")
        .expect("the second call's CDR");
    assert_eq!(second["seat"], "agent-1001", "{second:#}");
    let waited = second["waitSeconds"]
        .as_f64()
        .expect("a queued call has its wait");
    assert!(
        waited >= 2.0,
        "offered only after the wrap-up: waited {waited} s"
    );
}

#[test]
fn after_hours_the_menu_sends_the_caller_to_the_seat_on_duty() {
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let node = CenterNode::start(&manifests(free_rtp_range(40), Some(&today), ""));
    let port = free_port();
    node.register("1003", port);
    let on_duty = node.agent_answers("1003", port, "seat-uas-answer.xml");
    let keys = "#";
    node.caller(
        "center-caller-bye.xml",
        "200",
        "+4930555006",
        keys,
        500,
        3000,
    )
    .assert_ok("caller reaches the seat on duty");
    on_duty.assert_ok("the seat on duty answers");
    let cdrs = node.wait_cdrs(1);
    assert_eq!(cdrs[0]["seat"], "agent-1003", "{:#}", cdrs[0]);
    assert_eq!(cdrs[0]["outcome"], "answered", "{:#}", cdrs[0]);
    assert_eq!(
        cdrs[0]["ivrPath"],
        serde_json::json!(["main:after-hours"]),
        "{:#}",
        cdrs[0]
    );
}

#[test]
fn a_member_pin_puts_the_caller_ahead_of_a_waiting_non_member() {
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, ""));
    let port = free_port();
    node.register("1001", port);
    // A non-member waits first; then a member keys 2 (members' menu) and the PIN 1234.
    let plain = node.caller(
        "center-caller-bye.xml",
        "300",
        "+4930555007",
        "#",
        500,
        12000,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let member = node.caller(
        "center-caller-bye.xml",
        "200",
        "+4930555008",
        "21234",
        800,
        6000,
    );
    node.wait_for("both callers queued", || {
        node.sample("switchboard_queue_calls_waiting{queue=\"support\"}") == Some(2.0)
    });
    let agent = node.agent_answers("1001", port, "seat-uas-answer.xml");
    node.feature_code("1001", "*21");
    member.assert_ok("the member is served");
    agent.assert_ok("the agent answered the member");
    plain.assert_ok("the non-member hung up after waiting");
    let cdrs = node.wait_cdrs(3);
    let member = cdrs
        .iter()
        .find(|c| c["from"] == "+4930555008")
        .expect("member CDR");
    let plain = cdrs
        .iter()
        .find(|c| c["from"] == "+4930555007")
        .expect("non-member CDR");
    assert_eq!(member["seat"], "agent-1001", "{member:#}");
    assert_eq!(
        member["ivrPath"],
        serde_json::json!(["main:2", "members:pin-valid"]),
        "{member:#}"
    );
    assert_eq!(plain["outcome"], "abandoned", "{plain:#}");
}

#[test]
fn the_caller_rates_the_call_after_the_agent_hangs_up() {
    let queue = "  survey: {prompt: survey/rate.wav, thankYouPrompt: survey/thanks.wav, timeoutSeconds: 10}";
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, queue));
    let port = node.log_in("1002");
    // The agent hangs up 3 s after answering; the caller keys 4 during the survey prompt.
    let agent = node.agent_answers("1002", port, "call-uas-hangup.xml");
    node.caller("center-caller-wait.xml", "300", "+4930555009", "4", 5500, 0)
        .assert_ok("caller rates the call; the node hangs up after the thanks");
    agent.assert_ok("the agent hung up first");
    let cdrs = node.wait_cdrs(2);
    let call = cdrs
        .iter()
        .find(|c| c["to"] == "300")
        .expect("the queue call's CDR");
    assert_eq!(call["surveyScore"], 4, "{call:#}\n{}", node.log());
    assert_eq!(call["outcome"], "answered", "{call:#}");
}

#[test]
fn a_voicemail_message_is_recorded_with_its_metadata_and_cdr() {
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, ""));
    // Key 9 (voicemail), then # after the greeting and tone to end the message.
    // Key 9 over the menu prompt, speech after the greeting and tone, then # to end.
    node.caller_sending(
        "center-caller-wait.xml",
        "200",
        "+4930555010",
        &[(800, '9'), (13_500, '#')],
        Some((9_000, 13_000)),
        0,
    )
    .assert_ok("caller leaves a message and ends it with #");
    let cdrs = node.wait_cdrs(1);
    assert_eq!(cdrs[0]["outcome"], "voicemail", "{:#}", cdrs[0]);
    let file = cdrs[0]["voicemail"]
        .as_str()
        .expect("the message file in the CDR");
    assert!(file.starts_with("general/"), "{file}");
    let dir = node.recordings().join("voicemail");
    let wav = std::fs::read(dir.join(file)).expect("the message WAV");
    assert_eq!(&wav[..4], b"RIFF");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(file.replace(".wav", ".json"))).expect("the message metadata"),
    )
    .expect("JSON");
    assert_eq!(meta["from"], "+4930555010", "{meta:#}");
    assert_eq!(meta["mailbox"], "general", "{meta:#}");
    assert!(meta["durationSeconds"].as_f64().is_some(), "{meta:#}");
}

/// What one agent's phone does with the next call offered to it in a round.
#[derive(Debug, Clone, Copy)]
enum AgentPhone {
    /// Answers and talks until the node hangs up.
    Answers,
    /// Rings until the node cancels (ring timeout, or the caller gone).
    Rings,
    /// Answers and hangs up first after 3 s (the caller goes to the survey).
    HangsUp,
    /// Not there: the node's INVITE goes unanswered.
    Away,
}

/// What one caller does: the number dialed, the keys pressed from 1 s after the answer, and
/// when it hangs up.
#[derive(Debug, Clone)]
struct CallerPlan {
    number: String,
    dialed: &'static str,
    keys: &'static str,
    hang_up_ms: u32,
}

#[test]
fn random_hang_ups_leave_no_agent_stuck_and_no_port_allocated() {
    use rand::{Rng, SeedableRng};

    let seed = std::env::var("SWITCHBOARD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(support::rand_u16()) << 16 | u64::from(std::process::id()));
    eprintln!("seed {seed} (rerun with SWITCHBOARD_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let queue = "  wrapUpSeconds: 1\n  survey: {prompt: survey/rate.wav, thankYouPrompt: survey/thanks.wav, timeoutSeconds: 6}";
    let node = CenterNode::start(&manifests(free_rtp_range(80), None, queue));
    let phones = [("1001", node.log_in("1001")), ("1002", node.log_in("1002"))];
    // Most callers reach the queue (keying 1, or dialing it); the others give the menu no
    // key (timeouts until it gives up), voicemail, an invalid key or the members' PIN.
    let routes: [(&str, &str); 9] = [
        ("300", ""),
        ("300", ""),
        ("200", "1"),
        ("200", "1"),
        ("200", ""),
        ("200", "9"),
        ("200", "5"),
        ("200", "21234"),
        ("300", ""),
    ];
    let mut callers = Vec::new();
    for round in 0..6 {
        for (ext, _) in &phones {
            let seat = format!("agent-{ext}");
            node.wait_for(&format!("{seat} out of wrap-up"), || {
                !node.agent_in(&seat, "wrap_up")
            });
            if node.agent_in(&seat, "not_ready") {
                node.feature_code(ext, "*23");
            }
            node.wait_for(&format!("{seat} ready"), || node.agent_in(&seat, "ready"));
        }
        let behaviours = [
            AgentPhone::Answers,
            AgentPhone::Answers,
            AgentPhone::Rings,
            AgentPhone::HangsUp,
            AgentPhone::HangsUp,
            AgentPhone::Away,
        ];
        let agents: Vec<_> = phones
            .iter()
            .filter_map(|(ext, port)| {
                let phone = behaviours[rng.random_range(0..behaviours.len())];
                eprintln!("round {round}: {ext} {phone:?}");
                let scenario = match phone {
                    AgentPhone::Answers => "seat-uas-answer.xml",
                    AgentPhone::Rings => "call-uas-ring.xml",
                    AgentPhone::HangsUp => "call-uas-hangup.xml",
                    AgentPhone::Away => return None,
                };
                Some(node.agent_answers(ext, *port, scenario))
            })
            .collect();
        let round_callers: Vec<_> = (0..3)
            .map(|i| {
                let (dialed, keys) = routes[rng.random_range(0..routes.len())];
                let plan = CallerPlan {
                    number: format!("+49305559{round}{i}"),
                    dialed,
                    keys,
                    hang_up_ms: rng.random_range(300..14_000),
                };
                eprintln!("round {round}: {plan:?}");
                std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
                let sipp = node.caller(
                    "center-caller-bye.xml",
                    plan.dialed,
                    &plan.number,
                    plan.keys,
                    1000,
                    plan.hang_up_ms,
                );
                (plan, sipp)
            })
            .collect();
        for (plan, mut sipp) in round_callers {
            // The node may end the call first (menu given up, survey over): the caller's
            // scenario then fails, which is fine; what matters is the node's state after.
            let (status, _) = sipp.wait();
            eprintln!("round {round}: {} ended, sipp {status}", plan.number);
            callers.push(plan);
        }
        node.wait_for(&format!("round {round}: no agent ringing or busy"), || {
            phones.iter().all(|(ext, _)| {
                let seat = format!("agent-{ext}");
                !node.agent_in(&seat, "ringing") && !node.agent_in(&seat, "busy")
            })
        });
        node.wait_for(&format!("round {round}: nobody queued"), || {
            node.sample("switchboard_queue_calls_waiting{queue=\"support\"}") == Some(0.0)
        });
        node.wait_for(&format!("round {round}: every port returned"), || {
            node.sample("switchboard_rtp_port_pairs_in_use") == Some(0.0)
        });
        drop(agents);
    }
    // Every caller's call ended with exactly one CDR line.
    node.wait_for("a CDR of every caller", || {
        let cdrs = node.cdrs();
        callers.iter().all(|c| {
            cdrs.iter()
                .filter(|r| r["from"] == c.number.as_str())
                .count()
                == 1
        })
    });
    for (ext, _) in &phones {
        let seat = format!("agent-{ext}");
        assert!(
            !node.agent_in(&seat, "ringing") && !node.agent_in(&seat, "busy"),
            "{seat} stuck; node log:\n{}",
            node.log()
        );
    }
    assert_eq!(node.sample("switchboard_rtp_port_pairs_in_use"), Some(0.0));
    // Where the callers were when they left, for whoever reads the run.
    let log = node.log();
    for (what, line) in [
        ("queued", "caller queued"),
        ("abandoned in the queue", "caller abandoned"),
        ("seats rung", "ringing seat"),
        ("rung without answer", "seat did not take the call"),
        ("bridged to an agent", "agent answered; caller connected"),
        ("survey after the agent hung up", "caller rates the call"),
    ] {
        eprintln!("{what}: {}", log.matches(line).count());
    }
    for c in node.cdrs() {
        eprintln!("{} {} {}", c["from"], c["outcome"], c["hangupCause"]);
    }
}

#[test]
fn a_prompt_the_config_names_but_the_node_cannot_read_is_counted() {
    let node = CenterNode::start(&manifests(
        free_rtp_range(20),
        None,
        "  musicOnHold: campus/no-such-music.wav",
    ));
    assert_eq!(node.sample("switchboard_prompts_missing"), Some(1.0));
    assert!(
        node.log().contains("campus/no-such-music.wav"),
        "the missing prompt is named in the log:\n{}",
        node.log()
    );
}

#[test]
fn an_agent_on_a_call_from_a_colleague_is_not_offered_a_queue_call() {
    let node = CenterNode::start(&manifests(free_rtp_range(40), None, ""));
    // 1001 has been Ready longest, so it would get the next queue caller...
    let port_1001 = node.log_in("1001");
    std::thread::sleep(Duration::from_millis(300));
    let port_1002 = node.log_in("1002");
    // ...but seat 1003 calls it first (3 s of audio, then 1003 hangs up).
    let colleague_answers = node.agent_answers("1001", port_1001, "seat-uas-answer.xml");
    let colleague = support::Sipp::spawn(
        node.sip_port,
        "127.0.0.1",
        "seat-uac-bye.xml",
        free_port(),
        Some(support::free_media_port("127.0.0.1")),
        &[
            "-s",
            "1001",
            "-key",
            "ext",
            "1003",
            "-au",
            "1003",
            "-ap",
            "practice-1003",
        ],
    );
    node.wait_for("1001 busy on the colleague's call", || {
        node.agent_in("agent-1001", "busy")
    });
    let agent = node.agent_answers("1002", port_1002, "seat-uas-answer.xml");
    node.caller("center-caller-bye.xml", "300", "+4930555011", "", 500, 2000)
        .assert_ok("the queue caller is served");
    agent.assert_ok("1002 answered the queue caller");
    colleague.assert_ok("the colleague's call");
    colleague_answers.assert_ok("1001 took the colleague's call");
    // Two log-ins, the colleague's call and the queue call.
    let cdrs = node.wait_cdrs(4);
    let queued = cdrs
        .iter()
        .find(|c| c["from"] == "+4930555011")
        .expect("the queue call's CDR");
    assert_eq!(queued["seat"], "agent-1002", "{queued:#}");
    // A direct call has no wrap-up: 1001 is Ready as soon as it ends.
    node.wait_for("1001 ready after the colleague's call", || {
        node.agent_in("agent-1001", "ready")
    });
}
