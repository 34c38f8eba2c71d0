//! Walks driven by fixed event sequences and clocks, and property tests over random menus.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use switchboard_crds::callcenter::{
    self as spec, IvrMenu, MenuOption, PinCollection, Route, RouteAction, Weekday,
};
use switchboard_crds::common::SecretKeyReference;

use super::*;

// Asia/Shanghai, weekdays 09:00-18:00. Wednesday 2025-06-11:
/// 12:00 local: open.
const OPEN: &str = "2025-06-11T04:00:00Z";
/// 20:00 local: closed.
const CLOSED: &str = "2025-06-11T12:00:00Z";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 instant")
}

fn open() -> DateTime<Utc> {
    at(OPEN)
}

fn closed() -> DateTime<Utc> {
    at(CLOSED)
}

fn route(action: RouteAction, target: Option<&str>) -> Route {
    Route {
        action,
        target: target.map(str::to_string),
    }
}

fn queue(name: &str) -> Route {
    route(RouteAction::Queue, Some(name))
}

fn to_menu(name: &str) -> Route {
    route(RouteAction::Menu, Some(name))
}

fn hangup_route() -> Route {
    route(RouteAction::Hangup, None)
}

fn voicemail() -> Route {
    route(RouteAction::Voicemail, None)
}

fn prompt(menu: &str) -> String {
    format!("{menu}.wav")
}

/// A menu with defaults: prompt `NAME.wav`, 5 s timeout, 2 retries, no extra prompts.
fn menu(name: &str, options: &[(&str, Route)]) -> IvrMenu {
    IvrMenu {
        name: name.to_string(),
        prompt: prompt(name),
        options: options
            .iter()
            .map(|(digit, route)| MenuOption {
                digit: digit.to_string(),
                route: route.clone(),
            })
            .collect(),
        timeout_seconds: 5,
        max_retries: 2,
        invalid_prompt: None,
        timeout_prompt: None,
        on_failure: None,
        after_hours: None,
        collect_pin: None,
    }
}

fn with_notices(mut m: IvrMenu) -> IvrMenu {
    m.invalid_prompt = Some("invalid.wav".into());
    m.timeout_prompt = Some("timeout.wav".into());
    m
}

const SALT: &str = "test-salt";
const MEMBER_PIN: &str = "4711";

fn pin_menu(name: &str, on_valid: Route) -> IvrMenu {
    let mut m = menu(name, &[]);
    m.timeout_seconds = 3;
    m.collect_pin = Some(PinCollection {
        pins: SecretKeyReference {
            name: "member-pins".into(),
            key: "pins".into(),
        },
        max_digits: 6,
        priority_boost: 25,
        on_valid,
    });
    m
}

fn shanghai_hours() -> BusinessHours {
    BusinessHours::from_spec(&spec::BusinessHours {
        time_zone: "Asia/Shanghai".into(),
        weekly: vec![spec::OpeningHours {
            days: vec![
                Weekday::Monday,
                Weekday::Tuesday,
                Weekday::Wednesday,
                Weekday::Thursday,
                Weekday::Friday,
            ],
            open: "09:00".into(),
            close: "18:00".into(),
        }],
        holidays: vec![],
    })
    .expect("valid hours")
}

fn ivr(menus: &[IvrMenu]) -> Ivr {
    let pins = menus
        .iter()
        .filter(|m| m.collect_pin.is_some())
        .map(|m| {
            let set = PinSet::from_plain_lines(&format!("{MEMBER_PIN}\n123456\n"), SALT)
                .expect("valid PINs");
            (m.name.clone(), set)
        })
        .collect();
    Ivr::new(menus, Some(shanghai_hours()), pins)
}

fn play(p: &str) -> IvrAction {
    IvrAction::Play {
        prompt: p.to_string(),
    }
}

fn timer(secs: u64) -> IvrAction {
    IvrAction::StartTimer {
        after: Duration::from_secs(secs),
    }
}

fn leave(r: Route) -> IvrAction {
    IvrAction::Route(r)
}

use IvrAction::{CancelTimer, StopPrompt};

fn step(menu: &str, choice: IvrChoice) -> IvrStep {
    IvrStep {
        menu: menu.to_string(),
        choice,
    }
}

/// Starts in `menu` and lets its prompt end: the walk then waits for a key.
fn waiting_in(ivr: &Ivr, menu: &str) -> IvrWalk {
    let (mut walk, actions) = IvrWalk::start(ivr, menu, open());
    assert_eq!(actions, [play(&prompt(menu))]);
    assert_eq!(walk.on_prompt_finished(ivr), [timer(5)]);
    walk
}

fn main_menu() -> IvrMenu {
    menu(
        "main",
        &[
            ("1", queue("sales")),
            ("2", to_menu("support")),
            ("0", route(RouteAction::Seat, Some("operator"))),
            ("9", voicemail()),
            ("*", hangup_route()),
            ("#", queue("hash-line")),
        ],
    )
}

fn support_menu() -> IvrMenu {
    menu(
        "support",
        &[("1", queue("support")), ("9", to_menu("main"))],
    )
}

// --- Starting, prompts and keys ---

#[test]
fn start_plays_the_prompt_then_waits_for_the_menus_timeout() {
    let mut m = main_menu();
    m.timeout_seconds = 7;
    let ivr = ivr(&[m]);
    let (mut walk, actions) = IvrWalk::start(&ivr, "main", open());
    assert_eq!(actions, [play("main.wav")]);
    assert!(walk.is_playing() && !walk.is_waiting() && !walk.is_done());
    assert_eq!(walk.menu(), "main");
    assert_eq!(walk.on_prompt_finished(&ivr), [timer(7)]);
    assert!(walk.is_waiting());
    assert!(walk.path().is_empty());
}

#[test]
fn an_option_key_routes_out_of_the_ivr() {
    let ivr = ivr(&[main_menu(), support_menu()]);
    for (digit, want) in [
        ('1', queue("sales")),
        ('0', route(RouteAction::Seat, Some("operator"))),
        ('9', voicemail()),
        ('*', hangup_route()),
        ('#', queue("hash-line")),
    ] {
        let mut walk = waiting_in(&ivr, "main");
        assert_eq!(
            walk.on_digit(&ivr, digit, open()),
            [CancelTimer, leave(want.clone())]
        );
        assert!(walk.is_done());
        assert_eq!(walk.path(), [step("main", IvrChoice::Digit(digit))]);
        assert_eq!(
            walk.exit(),
            Some(&IvrExit {
                route: want,
                reason: IvrExitReason::Selected
            })
        );
    }
}

#[test]
fn a_key_during_the_prompt_barges_in() {
    let ivr = ivr(&[main_menu(), support_menu()]);
    let (mut walk, _) = IvrWalk::start(&ivr, "main", open());
    assert_eq!(
        walk.on_digit(&ivr, '1', open()),
        [StopPrompt, leave(queue("sales"))]
    );
    // Barge-in into another menu: the next prompt replaces the current one.
    let (mut walk, _) = IvrWalk::start(&ivr, "main", open());
    assert_eq!(
        walk.on_digit(&ivr, '2', open()),
        [StopPrompt, play("support.wav")]
    );
    assert_eq!(walk.menu(), "support");
}

#[test]
fn a_menu_option_enters_that_menu_with_fresh_retries() {
    let ivr = ivr(&[main_menu(), support_menu()]);
    let mut walk = waiting_in(&ivr, "main");
    walk.on_digit(&ivr, '5', open());
    assert_eq!(walk.retries(), 1);
    walk.on_prompt_finished(&ivr);
    assert_eq!(
        walk.on_digit(&ivr, '2', open()),
        [CancelTimer, play("support.wav")]
    );
    assert_eq!(walk.menu(), "support");
    assert_eq!(walk.retries(), 0);
    assert_eq!(walk.on_prompt_finished(&ivr), [timer(5)]);
    assert_eq!(
        walk.on_digit(&ivr, '9', open()),
        [CancelTimer, play("main.wav")]
    );
    walk.on_prompt_finished(&ivr);
    assert_eq!(
        walk.on_digit(&ivr, '1', open()),
        [CancelTimer, leave(queue("sales"))]
    );
    assert_eq!(
        walk.path(),
        [
            step("main", IvrChoice::Invalid),
            step("main", IvrChoice::Digit('2')),
            step("support", IvrChoice::Digit('9')),
            step("main", IvrChoice::Digit('1')),
        ]
    );
}

// --- Invalid keys, timeouts and retries ---

#[test]
fn an_invalid_key_plays_the_invalid_prompt_then_the_menu_again() {
    let ivr = ivr(&[with_notices(main_menu())]);
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(
        walk.on_digit(&ivr, '7', open()),
        [CancelTimer, play("invalid.wav")]
    );
    assert_eq!(walk.retries(), 1);
    assert_eq!(walk.on_prompt_finished(&ivr), [play("main.wav")]);
    assert_eq!(walk.on_prompt_finished(&ivr), [timer(5)]);
    assert_eq!(walk.path(), [step("main", IvrChoice::Invalid)]);
}

#[test]
fn an_invalid_key_without_an_invalid_prompt_repeats_the_menu() {
    let ivr = ivr(&[main_menu()]);
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(
        walk.on_digit(&ivr, '7', open()),
        [CancelTimer, play("main.wav")]
    );
    assert_eq!(walk.on_prompt_finished(&ivr), [timer(5)]);
    // Non-DTMF characters are just invalid keys.
    assert_eq!(
        walk.on_digit(&ivr, 'x', open()),
        [CancelTimer, play("main.wav")]
    );
    assert_eq!(walk.retries(), 2);
}

#[test]
fn an_invalid_key_over_the_invalid_prompt_counts_again() {
    let ivr = ivr(&[with_notices(main_menu())]);
    let mut walk = waiting_in(&ivr, "main");
    walk.on_digit(&ivr, '7', open());
    assert_eq!(
        walk.on_digit(&ivr, '8', open()),
        [StopPrompt, play("invalid.wav")]
    );
    assert_eq!(walk.retries(), 2);
    // A valid key over the notice acts at once.
    assert_eq!(
        walk.on_digit(&ivr, '1', open()),
        [StopPrompt, leave(queue("sales"))]
    );
}

#[test]
fn a_timeout_plays_the_timeout_prompt_then_the_menu_again() {
    let ivr = ivr(&[with_notices(main_menu())]);
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(walk.on_timeout(&ivr, open()), [play("timeout.wav")]);
    assert_eq!(walk.retries(), 1);
    assert_eq!(walk.on_prompt_finished(&ivr), [play("main.wav")]);
    assert_eq!(walk.on_prompt_finished(&ivr), [timer(5)]);
    assert_eq!(walk.path(), [step("main", IvrChoice::Timeout)]);
}

#[test]
fn a_timeout_without_a_timeout_prompt_repeats_the_menu() {
    let ivr = ivr(&[main_menu()]);
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(walk.on_timeout(&ivr, open()), [play("main.wav")]);
    assert_eq!(walk.on_prompt_finished(&ivr), [timer(5)]);
}

#[test]
fn the_failure_after_max_retries_takes_on_failure() {
    let mut m = with_notices(main_menu());
    m.max_retries = 2;
    m.on_failure = Some(queue("operator"));
    let ivr = ivr(&[m]);
    let mut walk = waiting_in(&ivr, "main");
    // Invalid keys and timeouts share the retry count.
    walk.on_digit(&ivr, '7', open());
    walk.on_prompt_finished(&ivr);
    walk.on_prompt_finished(&ivr);
    walk.on_timeout(&ivr, open());
    walk.on_prompt_finished(&ivr);
    walk.on_prompt_finished(&ivr);
    assert_eq!(walk.retries(), 2);
    assert_eq!(walk.on_timeout(&ivr, open()), [leave(queue("operator"))]);
    assert_eq!(
        walk.path(),
        [
            step("main", IvrChoice::Invalid),
            step("main", IvrChoice::Timeout),
            step("main", IvrChoice::Timeout),
            step("main", IvrChoice::Failure),
        ]
    );
    assert_eq!(
        walk.exit().map(|e| &e.reason),
        Some(&IvrExitReason::RetriesExhausted)
    );
}

#[test]
fn an_invalid_key_as_the_last_failure_cancels_the_timer_and_leaves() {
    let mut m = main_menu();
    m.max_retries = 0;
    m.on_failure = Some(voicemail());
    let ivr = ivr(&[m]);
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(
        walk.on_digit(&ivr, '7', open()),
        [CancelTimer, leave(voicemail())]
    );
    assert_eq!(
        walk.path(),
        [
            step("main", IvrChoice::Invalid),
            step("main", IvrChoice::Failure)
        ]
    );
}

#[test]
fn without_on_failure_the_caller_is_hung_up() {
    let mut m = main_menu();
    m.max_retries = 1;
    let ivr = ivr(&[m]);
    let mut walk = waiting_in(&ivr, "main");
    walk.on_timeout(&ivr, open());
    walk.on_prompt_finished(&ivr);
    assert_eq!(walk.on_timeout(&ivr, open()), [leave(hangup_route())]);
    assert_eq!(
        walk.exit().map(|e| &e.reason),
        Some(&IvrExitReason::RetriesExhausted)
    );
}

#[test]
fn on_failure_into_a_menu_starts_it_with_fresh_retries() {
    let mut m = main_menu();
    m.max_retries = 0;
    m.on_failure = Some(to_menu("support"));
    let ivr = ivr(&[m, support_menu()]);
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(walk.on_timeout(&ivr, open()), [play("support.wav")]);
    assert_eq!(walk.menu(), "support");
    assert_eq!(walk.retries(), 0);
    assert!(!walk.is_done());
}

// --- Business hours ---

fn after_hours_menu(after: Route) -> IvrMenu {
    let mut m = main_menu();
    m.after_hours = Some(after);
    m
}

#[test]
fn a_closed_center_takes_the_after_hours_route_at_start() {
    let ivr = ivr(&[after_hours_menu(voicemail())]);
    let (walk, actions) = IvrWalk::start(&ivr, "main", closed());
    assert_eq!(actions, [leave(voicemail())]);
    assert!(walk.is_done());
    assert_eq!(walk.path(), [step("main", IvrChoice::AfterHours)]);
    assert_eq!(
        walk.exit().map(|e| &e.reason),
        Some(&IvrExitReason::AfterHours)
    );
    // The same menu plays during opening hours.
    let (walk, actions) = IvrWalk::start(&ivr, "main", open());
    assert_eq!(actions, [play("main.wav")]);
    assert!(walk.path().is_empty());
}

#[test]
fn the_after_hours_edges_follow_the_clock() {
    let ivr = ivr(&[after_hours_menu(voicemail())]);
    // 08:59:59 and 18:00 Shanghai are closed; 09:00 and 17:59:59 are open.
    for (now, plays) in [
        ("2025-06-11T00:59:59Z", false),
        ("2025-06-11T01:00:00Z", true),
        ("2025-06-11T09:59:59Z", true),
        ("2025-06-11T10:00:00Z", false),
        // Saturday noon.
        ("2025-06-14T04:00:00Z", false),
    ] {
        let (_, actions) = IvrWalk::start(&ivr, "main", at(now));
        let want = if plays {
            play("main.wav")
        } else {
            leave(voicemail())
        };
        assert_eq!(actions, [want], "{now}");
    }
}

#[test]
fn an_after_hours_menu_route_plays_that_menu() {
    let night = menu("night", &[("1", voicemail())]);
    let ivr = ivr(&[after_hours_menu(to_menu("night")), night]);
    let (mut walk, actions) = IvrWalk::start(&ivr, "main", closed());
    assert_eq!(actions, [play("night.wav")]);
    assert_eq!(walk.menu(), "night");
    walk.on_prompt_finished(&ivr);
    assert_eq!(
        walk.on_digit(&ivr, '1', closed()),
        [CancelTimer, leave(voicemail())]
    );
    assert_eq!(
        walk.path(),
        [
            step("main", IvrChoice::AfterHours),
            step("night", IvrChoice::Digit('1'))
        ]
    );
}

#[test]
fn a_key_into_a_closed_menu_takes_its_after_hours_route() {
    let mut support = support_menu();
    support.after_hours = Some(voicemail());
    let ivr = ivr(&[main_menu(), support]);
    // The caller started while open and pressed 2 after closing time.
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(
        walk.on_digit(&ivr, '2', closed()),
        [CancelTimer, leave(voicemail())]
    );
    assert_eq!(
        walk.path(),
        [
            step("main", IvrChoice::Digit('2')),
            step("support", IvrChoice::AfterHours)
        ]
    );
    // The failure route into a closed menu is checked too.
    let mut main = main_menu();
    main.max_retries = 0;
    main.on_failure = Some(to_menu("support"));
    let mut support = support_menu();
    support.after_hours = Some(queue("night-shift"));
    let ivr = self::ivr(&[main, support]);
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(
        walk.on_timeout(&ivr, closed()),
        [leave(queue("night-shift"))]
    );
}

#[test]
fn without_business_hours_after_hours_routes_never_apply() {
    let m = after_hours_menu(voicemail());
    let ivr = Ivr::new(&[m], None, BTreeMap::new());
    let (_, actions) = IvrWalk::start(&ivr, "main", closed());
    assert_eq!(actions, [play("main.wav")]);
}

#[test]
fn a_menu_without_after_hours_plays_when_closed() {
    let ivr = ivr(&[main_menu()]);
    let (_, actions) = IvrWalk::start(&ivr, "main", closed());
    assert_eq!(actions, [play("main.wav")]);
}

// --- Member PINs ---

fn pin_ivr() -> Ivr {
    let mut m = with_notices(pin_menu("members", queue("gold")));
    m.on_failure = Some(queue("general"));
    ivr(&[m])
}

fn pin_waiting(ivr: &Ivr) -> IvrWalk {
    let (mut walk, actions) = IvrWalk::start(ivr, "members", open());
    assert_eq!(actions, [play("members.wav")]);
    assert_eq!(walk.on_prompt_finished(ivr), [timer(3)]);
    walk
}

fn press(walk: &mut IvrWalk, ivr: &Ivr, keys: &str) -> Vec<IvrAction> {
    keys.chars()
        .flat_map(|k| walk.on_digit(ivr, k, open()))
        .collect()
}

#[test]
fn a_valid_pin_ended_by_hash_raises_priority_and_follows_on_valid() {
    let ivr = pin_ivr();
    let mut walk = pin_waiting(&ivr);
    // Each digit re-arms the inter-digit timer.
    assert_eq!(walk.on_digit(&ivr, '4', open()), [timer(3)]);
    assert_eq!(
        press(&mut walk, &ivr, "711"),
        [timer(3), timer(3), timer(3)]
    );
    assert_eq!(
        walk.on_digit(&ivr, '#', open()),
        [
            CancelTimer,
            IvrAction::RaisePriority(25),
            leave(queue("gold"))
        ]
    );
    assert_eq!(walk.path(), [step("members", IvrChoice::PinValid)]);
    assert_eq!(
        walk.exit().map(|e| &e.reason),
        Some(&IvrExitReason::Selected)
    );
}

#[test]
fn max_digits_ends_the_pin_without_hash() {
    let ivr = pin_ivr();
    let mut walk = pin_waiting(&ivr);
    let actions = press(&mut walk, &ivr, "123456");
    assert_eq!(
        actions[actions.len() - 3..],
        [
            CancelTimer,
            IvrAction::RaisePriority(25),
            leave(queue("gold"))
        ]
    );
    // Six wrong digits are judged at once too.
    let mut walk = pin_waiting(&ivr);
    let actions = press(&mut walk, &ivr, "999999");
    assert_eq!(
        actions[actions.len() - 2..],
        [CancelTimer, play("invalid.wav")]
    );
    assert_eq!(walk.path(), [step("members", IvrChoice::PinInvalid)]);
}

#[test]
fn star_clears_the_digits_entered() {
    let ivr = pin_ivr();
    let mut walk = pin_waiting(&ivr);
    press(&mut walk, &ivr, "99");
    assert_eq!(walk.on_digit(&ivr, '*', open()), [timer(3)]);
    press(&mut walk, &ivr, MEMBER_PIN);
    assert_eq!(
        walk.on_digit(&ivr, '#', open()),
        [
            CancelTimer,
            IvrAction::RaisePriority(25),
            leave(queue("gold"))
        ]
    );
}

#[test]
fn a_wrong_pin_counts_as_an_invalid_key_then_fails() {
    let ivr = pin_ivr();
    let mut walk = pin_waiting(&ivr);
    for retry in 1..=2 {
        assert_eq!(
            press(&mut walk, &ivr, "1111#")[4..],
            [CancelTimer, play("invalid.wav")]
        );
        assert_eq!(walk.retries(), retry);
        assert_eq!(walk.on_prompt_finished(&ivr), [play("members.wav")]);
        assert_eq!(walk.on_prompt_finished(&ivr), [timer(3)]);
    }
    assert_eq!(
        press(&mut walk, &ivr, "2222#")[4..],
        [CancelTimer, leave(queue("general"))]
    );
    assert_eq!(
        walk.path(),
        [
            step("members", IvrChoice::PinInvalid),
            step("members", IvrChoice::PinInvalid),
            step("members", IvrChoice::PinInvalid),
            step("members", IvrChoice::Failure),
        ]
    );
    assert_eq!(
        walk.exit().map(|e| &e.reason),
        Some(&IvrExitReason::RetriesExhausted)
    );
}

#[test]
fn a_retry_after_a_wrong_pin_starts_from_no_digits() {
    let ivr = pin_ivr();
    let mut walk = pin_waiting(&ivr);
    press(&mut walk, &ivr, "12#");
    walk.on_prompt_finished(&ivr);
    walk.on_prompt_finished(&ivr);
    assert_eq!(
        press(&mut walk, &ivr, "4711#")[4..],
        [
            CancelTimer,
            IvrAction::RaisePriority(25),
            leave(queue("gold"))
        ]
    );
}

#[test]
fn the_inter_digit_timeout_ends_the_pin_and_an_empty_one_is_a_timeout() {
    let ivr = pin_ivr();
    let mut walk = pin_waiting(&ivr);
    press(&mut walk, &ivr, MEMBER_PIN);
    assert_eq!(
        walk.on_timeout(&ivr, open()),
        [IvrAction::RaisePriority(25), leave(queue("gold"))]
    );
    // A partial wrong PIN at the timeout is a wrong PIN.
    let mut walk = pin_waiting(&ivr);
    press(&mut walk, &ivr, "47");
    assert_eq!(walk.on_timeout(&ivr, open()), [play("invalid.wav")]);
    assert_eq!(walk.path(), [step("members", IvrChoice::PinInvalid)]);
    // Nothing entered: a plain timeout.
    let mut walk = pin_waiting(&ivr);
    assert_eq!(walk.on_timeout(&ivr, open()), [play("timeout.wav")]);
    assert_eq!(walk.path(), [step("members", IvrChoice::Timeout)]);
    // Cleared with `*`, then silent: a timeout as well.
    let mut walk = pin_waiting(&ivr);
    press(&mut walk, &ivr, "47*");
    assert_eq!(walk.on_timeout(&ivr, open()), [play("timeout.wav")]);
}

#[test]
fn hash_alone_and_odd_keys_are_wrong_pins() {
    let ivr = pin_ivr();
    let mut walk = pin_waiting(&ivr);
    assert_eq!(
        walk.on_digit(&ivr, '#', open()),
        [CancelTimer, play("invalid.wav")]
    );
    walk.on_prompt_finished(&ivr);
    walk.on_prompt_finished(&ivr);
    press(&mut walk, &ivr, "47");
    assert_eq!(
        walk.on_digit(&ivr, 'A', open()),
        [CancelTimer, play("invalid.wav")]
    );
    assert_eq!(
        walk.path(),
        [
            step("members", IvrChoice::PinInvalid),
            step("members", IvrChoice::PinInvalid)
        ]
    );
}

#[test]
fn pin_digits_barge_into_the_prompt() {
    let ivr = pin_ivr();
    let (mut walk, _) = IvrWalk::start(&ivr, "members", open());
    assert_eq!(walk.on_digit(&ivr, '4', open()), [StopPrompt, timer(3)]);
    assert!(walk.is_waiting());
    // A prompt end reported late for the stopped prompt changes nothing.
    assert_eq!(walk.on_prompt_finished(&ivr), []);
    assert_eq!(
        press(&mut walk, &ivr, "711#")[3..],
        [
            CancelTimer,
            IvrAction::RaisePriority(25),
            leave(queue("gold"))
        ]
    );
    // `*` and `#` over the prompt too.
    let (mut walk, _) = IvrWalk::start(&ivr, "members", open());
    assert_eq!(walk.on_digit(&ivr, '*', open()), [StopPrompt, timer(3)]);
    let (mut walk, _) = IvrWalk::start(&ivr, "members", open());
    assert_eq!(
        walk.on_digit(&ivr, '#', open()),
        [StopPrompt, play("invalid.wav")]
    );
}

#[test]
fn a_walk_in_the_logs_shows_no_pin_digits() {
    let ivr = pin_ivr();
    let mut walk = pin_waiting(&ivr);
    press(&mut walk, &ivr, "98765");
    let shown = format!("{walk:?}");
    assert!(!shown.contains("98765"), "{shown}");
    assert!(shown.contains("5 digits"), "{shown}");
}

#[test]
fn a_pin_menu_without_a_pin_list_refuses_every_pin() {
    let m = pin_menu("members", queue("gold"));
    let ivr = Ivr::new(&[m], None, BTreeMap::new());
    let (mut walk, _) = IvrWalk::start(&ivr, "members", open());
    walk.on_prompt_finished(&ivr);
    assert_eq!(
        press(&mut walk, &ivr, "4711#")[4..],
        [CancelTimer, play("members.wav")]
    );
    assert_eq!(walk.path(), [step("members", IvrChoice::PinInvalid)]);
}

#[test]
fn a_valid_pin_into_a_menu_boosts_once_per_pin_menu() {
    let members = pin_menu("members", to_menu("member-services"));
    let services = menu(
        "member-services",
        &[("1", queue("gold")), ("8", to_menu("members"))],
    );
    let ivr = ivr(&[members, services]);
    let (mut walk, _) = IvrWalk::start(&ivr, "members", open());
    walk.on_prompt_finished(&ivr);
    assert_eq!(
        press(&mut walk, &ivr, "4711#")[4..],
        [
            CancelTimer,
            IvrAction::RaisePriority(25),
            play("member-services.wav")
        ]
    );
    // Back into the PIN menu and a valid PIN again: no second boost.
    walk.on_digit(&ivr, '8', open());
    let actions = press(&mut walk, &ivr, "123456");
    assert!(
        !actions.contains(&IvrAction::RaisePriority(25)),
        "{actions:?}"
    );
    assert_eq!(actions.last(), Some(&play("member-services.wav")));
}

// --- Loops, unknown menus and limits ---

#[test]
fn after_hours_menu_cycles_hang_up_instead_of_spinning() {
    let mut a = menu("a", &[]);
    a.after_hours = Some(to_menu("b"));
    let mut b = menu("b", &[]);
    b.after_hours = Some(to_menu("a"));
    let ivr = ivr(&[a, b]);
    let (walk, actions) = IvrWalk::start(&ivr, "a", closed());
    assert_eq!(actions, [leave(hangup_route())]);
    assert_eq!(
        walk.exit().map(|e| &e.reason),
        Some(&IvrExitReason::MenuLoop)
    );
    assert_eq!(walk.path().len(), MAX_MENU_HOPS as usize);
    // Open, the same menus play normally.
    let (_, actions) = IvrWalk::start(&ivr, "a", open());
    assert_eq!(actions, [play("a.wav")]);
}

#[test]
fn a_silent_caller_in_a_failure_loop_is_hung_up_after_the_hop_limit() {
    let mut a = menu("a", &[]);
    a.max_retries = 0;
    a.on_failure = Some(to_menu("b"));
    let mut b = menu("b", &[]);
    b.max_retries = 0;
    b.on_failure = Some(to_menu("a"));
    let ivr = ivr(&[a, b]);
    let (mut walk, _) = IvrWalk::start(&ivr, "a", open());
    let mut events = 0;
    while !walk.is_done() {
        events += 1;
        assert!(events < 100, "no end");
        if walk.is_playing() {
            walk.on_prompt_finished(&ivr);
        } else {
            walk.on_timeout(&ivr, open());
        }
    }
    assert_eq!(
        walk.exit().map(|e| &e.reason),
        Some(&IvrExitReason::MenuLoop)
    );
    // 16 menus entered: each played once and timed out once.
    assert_eq!(events, 2 * MAX_MENU_HOPS as usize);
}

#[test]
fn a_key_resets_the_hop_count() {
    let mut a = menu("a", &[("1", to_menu("b"))]);
    a.max_retries = 0;
    a.on_failure = Some(to_menu("b"));
    let mut b = menu("b", &[("1", to_menu("a"))]);
    b.max_retries = 0;
    b.on_failure = Some(to_menu("a"));
    let ivr = ivr(&[a, b]);
    let (mut walk, _) = IvrWalk::start(&ivr, "a", open());
    // Ten silent hops, a key, ten more silent hops: still in the IVR.
    for round in 0..2 {
        for _ in 0..10 {
            walk.on_prompt_finished(&ivr);
            walk.on_timeout(&ivr, open());
        }
        assert!(!walk.is_done(), "round {round}");
        walk.on_digit(&ivr, '1', open());
    }
    assert!(!walk.is_done());
}

#[test]
fn an_unknown_start_menu_hangs_up() {
    let ivr = ivr(&[main_menu()]);
    let (mut walk, actions) = IvrWalk::start(&ivr, "gone", open());
    assert_eq!(actions, [leave(hangup_route())]);
    assert_eq!(
        walk.exit().map(|e| &e.reason),
        Some(&IvrExitReason::UnknownMenu("gone".into()))
    );
    assert!(walk.path().is_empty());
    assert!(walk.take_steps().is_empty());
}

#[test]
fn an_option_into_an_unknown_menu_hangs_up() {
    let m = menu(
        "main",
        &[
            ("3", to_menu("retired")),
            ("4", route(RouteAction::Menu, None)),
        ],
    );
    let ivr = ivr(&[m]);
    for (digit, name) in [('3', "retired"), ('4', "")] {
        let mut walk = waiting_in(&ivr, "main");
        assert_eq!(
            walk.on_digit(&ivr, digit, open()),
            [CancelTimer, leave(hangup_route())]
        );
        assert_eq!(
            walk.exit().map(|e| &e.reason),
            Some(&IvrExitReason::UnknownMenu(name.into()))
        );
    }
}

#[test]
fn a_menu_removed_by_a_configuration_change_hangs_up() {
    let old = ivr(&[main_menu(), support_menu()]);
    let new = ivr(&[main_menu()]);
    let (mut walk, _) = IvrWalk::start(&old, "main", open());
    walk.on_digit(&old, '2', open());
    assert_eq!(walk.menu(), "support");
    // Prompt end, key and timeout in the lost menu all hang up.
    let mut w = walk.clone();
    assert_eq!(w.on_prompt_finished(&new), [leave(hangup_route())]);
    let mut w = walk.clone();
    assert_eq!(
        w.on_digit(&new, '1', open()),
        [StopPrompt, leave(hangup_route())]
    );
    walk.on_prompt_finished(&old);
    let mut w = walk.clone();
    assert_eq!(w.on_timeout(&new, open()), [leave(hangup_route())]);
    assert_eq!(
        w.exit().map(|e| &e.reason),
        Some(&IvrExitReason::UnknownMenu("support".into()))
    );
}

#[test]
fn changed_options_apply_to_callers_already_in_the_menu() {
    let old = ivr(&[main_menu()]);
    let new = ivr(&[menu("main", &[("1", queue("sales-2"))])]);
    let mut walk = waiting_in(&old, "main");
    assert_eq!(
        walk.on_digit(&new, '1', open()),
        [CancelTimer, leave(queue("sales-2"))]
    );
}

#[test]
fn too_many_keys_take_the_failure_route_but_never_another_menu() {
    let mut m = menu("main", &[("1", to_menu("main"))]);
    m.on_failure = Some(queue("operator"));
    let ivr = ivr(&[m.clone()]);
    let (mut walk, _) = IvrWalk::start(&ivr, "main", open());
    for _ in 0..MAX_CALLER_KEYS {
        walk.on_digit(&ivr, '1', open());
        assert!(!walk.is_done());
    }
    assert_eq!(
        walk.on_digit(&ivr, '1', open()),
        [StopPrompt, leave(queue("operator"))]
    );
    assert_eq!(
        walk.exit().map(|e| &e.reason),
        Some(&IvrExitReason::KeyLimit)
    );
    assert_eq!(walk.path().last(), Some(&step("main", IvrChoice::Failure)));
    // A failure route into a menu is replaced by a hang-up.
    m.on_failure = Some(to_menu("main"));
    let ivr = self::ivr(&[m]);
    let (mut walk, _) = IvrWalk::start(&ivr, "main", open());
    let actions = press(&mut walk, &ivr, &"1".repeat(MAX_CALLER_KEYS as usize + 1));
    assert_eq!(actions.last(), Some(&leave(hangup_route())));
}

#[test]
fn late_and_duplicate_events_change_nothing() {
    let ivr = ivr(&[with_notices(main_menu())]);
    let (mut walk, _) = IvrWalk::start(&ivr, "main", open());
    // A timer that fired after it was replaced by a prompt.
    assert_eq!(walk.on_timeout(&ivr, open()), []);
    walk.on_prompt_finished(&ivr);
    // A second prompt end while waiting.
    assert_eq!(walk.on_prompt_finished(&ivr), []);
    assert!(walk.is_waiting());
    walk.on_digit(&ivr, '1', open());
    assert!(walk.is_done());
    assert_eq!(walk.on_digit(&ivr, '2', open()), []);
    assert_eq!(walk.on_timeout(&ivr, open()), []);
    assert_eq!(walk.on_prompt_finished(&ivr), []);
    assert_eq!(walk.path().len(), 1);
}

#[test]
fn duplicate_menus_and_malformed_options_do_not_break_the_ivr() {
    let first = menu(
        "main",
        &[
            ("1", queue("first")),
            ("12", queue("two-keys")),
            ("", queue("none")),
        ],
    );
    let second = menu("main", &[("1", queue("second"))]);
    let ivr = ivr(&[first, second]);
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(
        walk.on_digit(&ivr, '1', open()),
        [CancelTimer, leave(queue("first"))]
    );
    let mut walk = waiting_in(&ivr, "main");
    assert_eq!(
        walk.on_digit(&ivr, '2', open()),
        [CancelTimer, play("main.wav")]
    );
}

#[test]
fn a_zero_timeout_is_raised_to_one_second() {
    let mut m = main_menu();
    m.timeout_seconds = 0;
    let ivr = ivr(&[m]);
    let (mut walk, _) = IvrWalk::start(&ivr, "main", open());
    assert_eq!(walk.on_prompt_finished(&ivr), [timer(1)]);
}

// --- Steps and metrics ---

#[test]
fn take_steps_hands_out_each_step_once() {
    let ivr = ivr(&[main_menu(), support_menu()]);
    let mut walk = waiting_in(&ivr, "main");
    walk.on_timeout(&ivr, open());
    assert_eq!(walk.take_steps(), [step("main", IvrChoice::Timeout)]);
    assert!(walk.take_steps().is_empty());
    walk.on_digit(&ivr, '2', open());
    walk.on_digit(&ivr, '1', open());
    assert_eq!(
        walk.take_steps(),
        [
            step("main", IvrChoice::Digit('2')),
            step("support", IvrChoice::Digit('1'))
        ]
    );
    assert_eq!(walk.path().len(), 3);
}

#[test]
fn choice_labels_are_the_documented_ones() {
    let labels: Vec<_> = [
        IvrChoice::Digit('3'),
        IvrChoice::Digit('#'),
        IvrChoice::Digit('*'),
        IvrChoice::Invalid,
        IvrChoice::Timeout,
        IvrChoice::Failure,
        IvrChoice::AfterHours,
        IvrChoice::PinValid,
        IvrChoice::PinInvalid,
    ]
    .iter()
    .map(|c| c.label().into_owned())
    .collect();
    assert_eq!(
        labels,
        [
            "3",
            "#",
            "*",
            "invalid",
            "timeout",
            "failure",
            "after-hours",
            "pin-valid",
            "pin-invalid"
        ]
    );
}

fn counter(registry: &prometheus::Registry, menu: &str, choice: &str) -> Option<f64> {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "switchboard_ivr_paths_total")
        .flat_map(|f| f.get_metric().iter())
        .find(|m| {
            let labels: BTreeMap<_, _> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            labels.get("menu") == Some(&menu) && labels.get("choice") == Some(&choice)
        })
        .map(|m| m.get_counter().get_value())
}

#[test]
fn metrics_count_the_steps_of_a_walk() {
    let registry = prometheus::Registry::new();
    let metrics = IvrMetrics::new(&registry).expect("registers");
    let mut support = support_menu();
    support.after_hours = Some(voicemail());
    let ivr = ivr(&[main_menu(), support]);
    let mut walk = waiting_in(&ivr, "main");
    walk.on_digit(&ivr, '7', open());
    walk.on_prompt_finished(&ivr);
    walk.on_timeout(&ivr, open());
    metrics.count(&walk.take_steps());
    walk.on_digit(&ivr, '2', closed());
    metrics.count(&walk.take_steps());
    assert_eq!(counter(&registry, "main", "invalid"), Some(1.0));
    assert_eq!(counter(&registry, "main", "timeout"), Some(1.0));
    assert_eq!(counter(&registry, "main", "2"), Some(1.0));
    assert_eq!(counter(&registry, "support", "after-hours"), Some(1.0));
    assert_eq!(
        counter(&registry, "main", "7"),
        None,
        "invalid keys get no series"
    );
    // A second walk adds to the same series.
    let mut walk = waiting_in(&ivr, "main");
    walk.on_digit(&ivr, '8', open());
    metrics.count(&walk.take_steps());
    assert_eq!(counter(&registry, "main", "invalid"), Some(2.0));
    // Registering twice in one registry is refused, not a panic.
    assert!(IvrMetrics::new(&registry).is_err());
}

// --- Properties ---

#[derive(Debug, Clone, Copy)]
enum Ev {
    Digit(char),
    PromptEnd,
    Timeout,
}

fn arb_event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => prop::sample::select(&['0', '1', '2', '3', '4', '5', '7', '9', '*', '#', 'A', 'x'][..])
            .prop_map(Ev::Digit),
        2 => Just(Ev::PromptEnd),
        2 => Just(Ev::Timeout),
    ]
}

/// Routes into one of `n` menus (`m{n}` does not exist), or out of the IVR.
fn arb_route(n: usize) -> impl Strategy<Value = Route> {
    prop_oneof![
        4 => (0..=n).prop_map(|i| to_menu(&format!("m{i}"))),
        1 => Just(queue("support")),
        1 => Just(hangup_route()),
        1 => Just(voicemail()),
        1 => Just(route(RouteAction::Seat, Some("1001"))),
    ]
}

/// Retries in generated menus; bounds the events a walk can take.
const MAX_RETRIES_GENERATED: u32 = 3;

fn arb_menu(index: usize, n: usize) -> impl Strategy<Value = IvrMenu> {
    (
        prop::collection::vec(
            (
                prop::sample::select(&["0", "1", "2", "3", "5", "*", "#"][..]),
                arb_route(n),
            ),
            0..4,
        ),
        0..=MAX_RETRIES_GENERATED,
        any::<(bool, bool)>(),
        prop::option::of(arb_route(n)),
        prop::option::weighted(0.3, arb_route(n)),
        prop::option::weighted(0.3, (4u32..=6, arb_route(n))),
    )
        .prop_map(
            move |(options, max_retries, (invalid, timeout), on_failure, after_hours, pin)| {
                let name = format!("m{index}");
                let mut m = match pin {
                    Some((max_digits, on_valid)) => {
                        let mut m = pin_menu(&name, on_valid);
                        if let Some(c) = &mut m.collect_pin {
                            c.max_digits = max_digits;
                        }
                        m
                    }
                    None => {
                        let options: Vec<(&str, Route)> = options.into_iter().collect();
                        menu(&name, &options)
                    }
                };
                m.max_retries = max_retries;
                if invalid {
                    m.invalid_prompt = Some("invalid.wav".into());
                }
                if timeout {
                    m.timeout_prompt = Some("timeout.wav".into());
                }
                m.on_failure = on_failure;
                m.after_hours = after_hours;
                m
            },
        )
}

fn arb_menus() -> impl Strategy<Value = Vec<IvrMenu>> {
    (1usize..=4).prop_flat_map(|n| (0..n).map(|i| arb_menu(i, n)).collect::<Vec<_>>())
}

/// What the session has running, kept from the actions only.
#[derive(Debug, Default)]
struct FakeSession {
    playing: bool,
    timer: bool,
    routed: Option<Route>,
}

impl FakeSession {
    fn apply(&mut self, actions: &[IvrAction]) {
        for (i, action) in actions.iter().enumerate() {
            assert!(self.routed.is_none(), "action after the route: {actions:?}");
            match action {
                IvrAction::Play { .. } => self.playing = true,
                IvrAction::StopPrompt => {
                    assert!(self.playing, "stops a prompt that is not playing");
                    self.playing = false;
                }
                IvrAction::StartTimer { after } => {
                    assert!(*after >= Duration::from_secs(1));
                    self.timer = true;
                }
                IvrAction::CancelTimer => {
                    assert!(self.timer, "cancels a timer that is not armed");
                    self.timer = false;
                }
                IvrAction::RaisePriority(_) => {}
                IvrAction::Route(route) => {
                    assert_ne!(route.action, RouteAction::Menu, "menu routes stay inside");
                    assert_eq!(i + 1, actions.len(), "the route is the last action");
                    self.routed = Some(route.clone());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A session that delivers only events that can happen (a prompt end while a prompt
    /// plays, a timeout while the timer is armed, keys at any time) always gets a Route
    /// within a bounded number of events, and its view always matches the walk's.
    #[test]
    fn every_walk_ends_in_a_route_within_a_bound(
        menus in arb_menus(),
        events in prop::collection::vec(arb_event(), 1..48),
        start in 0usize..5,
        is_open in any::<bool>(),
    ) {
        let ivr = ivr(&menus);
        let now = if is_open { open() } else { closed() };
        let per_key = 1 + (MAX_MENU_HOPS as usize + 1) * (2 + 3 * (MAX_RETRIES_GENERATED as usize + 1));
        let bound = (MAX_CALLER_KEYS as usize + 2) * per_key;
        let (mut walk, actions) = IvrWalk::start(&ivr, &format!("m{start}"), now);
        let mut session = FakeSession::default();
        session.apply(&actions);
        let mut delivered = 0usize;
        while session.routed.is_none() {
            prop_assert!(!walk.is_done());
            // Always doing something: a prompt or an armed timer, never both.
            prop_assert!(walk.is_playing() != walk.is_waiting());
            prop_assert_eq!(session.playing, walk.is_playing());
            prop_assert_eq!(session.timer, walk.is_waiting());
            let ev = match events[delivered % events.len()] {
                Ev::PromptEnd if !session.playing => Ev::Timeout,
                Ev::Timeout if !session.timer => Ev::PromptEnd,
                ev => ev,
            };
            let actions = match ev {
                Ev::Digit(d) => walk.on_digit(&ivr, d, now),
                Ev::PromptEnd => {
                    session.playing = false;
                    walk.on_prompt_finished(&ivr)
                }
                Ev::Timeout => {
                    session.timer = false;
                    walk.on_timeout(&ivr, now)
                }
            };
            session.apply(&actions);
            delivered += 1;
            prop_assert!(delivered <= bound, "{} events without a route", delivered);
        }
        prop_assert!(walk.is_done());
        prop_assert_eq!(walk.exit().map(|e| &e.route), session.routed.as_ref());
        // Steps name only configured menus and configured keys.
        for s in walk.path() {
            let menu = menus.iter().find(|m| m.name == s.menu);
            prop_assert!(menu.is_some(), "step in unknown menu {}", s.menu);
            if let (IvrChoice::Digit(d), Some(m)) = (s.choice, menu) {
                prop_assert!(m.options.iter().any(|o| o.digit == d.to_string()));
            }
        }
    }

    /// Any events in any order, possible or not, never panic, and after the route nothing
    /// more happens.
    #[test]
    fn arbitrary_events_never_panic_and_the_end_is_final(
        menus in arb_menus(),
        events in prop::collection::vec(arb_event(), 0..200),
        start in 0usize..5,
        is_open in any::<bool>(),
    ) {
        let ivr = ivr(&menus);
        let now = if is_open { open() } else { closed() };
        let (mut walk, actions) = IvrWalk::start(&ivr, &format!("m{start}"), now);
        let mut routes = actions.iter().filter(|a| matches!(a, IvrAction::Route(_))).count();
        for ev in events {
            let was_done = walk.is_done();
            let actions = match ev {
                Ev::Digit(d) => walk.on_digit(&ivr, d, now),
                Ev::PromptEnd => walk.on_prompt_finished(&ivr),
                Ev::Timeout => walk.on_timeout(&ivr, now),
            };
            if was_done {
                prop_assert!(actions.is_empty());
            }
            routes += actions.iter().filter(|a| matches!(a, IvrAction::Route(_))).count();
            prop_assert!(routes <= 1);
            prop_assert_eq!(routes == 1, walk.is_done());
        }
    }
}
