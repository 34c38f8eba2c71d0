//! The IVR: menus, DTMF, timeouts, retries and business hours (pure).
//!
//! [`Ivr`] holds the compiled menus of one call center; an [`IvrWalk`] is where one caller is
//! in them. The walk does no I/O: the call session feeds it events (prompt ended, key pressed,
//! input timer fired) with the wall-clock time, and carries out the [`IvrAction`]s it returns.
//!
//! The session's side of the contract:
//! - `Play` replaces whatever plays; call [`IvrWalk::on_prompt_finished`] when the prompt
//!   named by the last `Play` has played to its end (not for a prompt that was replaced or
//!   stopped).
//! - `StartTimer` (re)arms the one input timer; call [`IvrWalk::on_timeout`] when it fires.
//!   `CancelTimer` disarms it.
//! - `StopPrompt` stops the prompt because the caller pressed a key over it (barge-in).
//! - `Route` ends the walk: stop the prompt and timer and send the call there. A walk that
//!   has ended ignores further events; so does a walk given an event it is not waiting for
//!   (a late timer or prompt end), so races in the session cannot move the caller.
//!
//! Until it ends, a walk is always either playing a prompt or waiting with the timer armed,
//! so a silent caller always progresses. Every menu hop without a key counts against
//! [`MAX_MENU_HOPS`] and every key against [`MAX_CALLER_KEYS`], so with finite retries a walk
//! always ends (see the property test).

pub mod hours;
pub mod pins;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, Opts, Registry};
use switchboard_crds::callcenter::{IvrMenu, Route, RouteAction};

pub use hours::{BusinessHours, HoursError};
pub use pins::{PinError, PinSet};

/// Most menus a caller enters in a row without pressing a key (after-hours, failure and PIN
/// routes chaining menus); one more is taken for a configuration loop and hangs up.
pub const MAX_MENU_HOPS: u32 = 16;

/// Most keys one caller may press in the IVR. Far beyond a person's navigation; a stuck key
/// or a robot reaching it is sent to the current menu's failure route (or hung up).
pub const MAX_CALLER_KEYS: u32 = 256;

/// One menu, compiled.
#[derive(Debug, Clone)]
struct Menu {
    name: String,
    prompt: String,
    options: BTreeMap<char, Route>,
    timeout: Duration,
    max_retries: u32,
    invalid_prompt: Option<String>,
    timeout_prompt: Option<String>,
    on_failure: Option<Route>,
    after_hours: Option<Route>,
    pin: Option<PinMenu>,
}

#[derive(Debug, Clone)]
struct PinMenu {
    max_digits: usize,
    priority_boost: u32,
    on_valid: Route,
}

impl Menu {
    fn compile(spec: &IvrMenu) -> Self {
        let mut options = BTreeMap::new();
        for option in &spec.options {
            let mut chars = option.digit.chars();
            match (chars.next(), chars.next()) {
                (Some(digit), None) => {
                    options.entry(digit).or_insert_with(|| option.route.clone());
                }
                _ => tracing::warn!(
                    menu = %spec.name,
                    digit = %option.digit,
                    "IVR option is not one DTMF key; ignored"
                ),
            }
        }
        Self {
            name: spec.name.clone(),
            prompt: spec.prompt.clone(),
            options,
            // A zero timeout would spin; validation allows 1..=60 s.
            timeout: Duration::from_secs(u64::from(spec.timeout_seconds.max(1))),
            max_retries: spec.max_retries,
            invalid_prompt: spec.invalid_prompt.clone(),
            timeout_prompt: spec.timeout_prompt.clone(),
            on_failure: spec.on_failure.clone(),
            after_hours: spec.after_hours.clone(),
            pin: spec.collect_pin.as_ref().map(|c| PinMenu {
                max_digits: usize::try_from(c.max_digits)
                    .unwrap_or(pins::MAX_PIN_DIGITS)
                    .clamp(pins::MIN_PIN_DIGITS, pins::MAX_PIN_DIGITS),
                priority_boost: c.priority_boost,
                on_valid: c.on_valid.clone(),
            }),
        }
    }

    fn failure_route(&self) -> Route {
        self.on_failure.clone().unwrap_or_else(hangup)
    }
}

fn hangup() -> Route {
    Route {
        action: RouteAction::Hangup,
        target: None,
    }
}

/// The voice menus of one call center, with its business hours and member PINs.
#[derive(Debug, Clone, Default)]
pub struct Ivr {
    menus: BTreeMap<String, Menu>,
    hours: Option<BusinessHours>,
    pins: BTreeMap<String, PinSet>,
}

impl Ivr {
    /// The IVR of `menus`; `pins` holds the PIN set of each PIN-collecting menu by menu name.
    /// A PIN menu without a set refuses every PIN.
    pub fn new(
        menus: &[IvrMenu],
        hours: Option<BusinessHours>,
        pins: BTreeMap<String, PinSet>,
    ) -> Self {
        let mut compiled = BTreeMap::new();
        for spec in menus {
            if compiled.contains_key(&spec.name) {
                tracing::warn!(menu = %spec.name, "duplicate IVR menu name; the first one is used");
                continue;
            }
            if spec.collect_pin.is_some() && !pins.contains_key(&spec.name) {
                tracing::warn!(menu = %spec.name, "IVR menu collects PINs but has no PIN list; every PIN is refused");
            }
            compiled.insert(spec.name.clone(), Menu::compile(spec));
        }
        Self {
            menus: compiled,
            hours,
            pins,
        }
    }

    /// Whether a menu of this name exists.
    pub fn has_menu(&self, name: &str) -> bool {
        self.menus.contains_key(name)
    }

    /// The business hours menus with an after-hours route follow.
    pub fn hours(&self) -> Option<&BusinessHours> {
        self.hours.as_ref()
    }

    fn is_closed(&self, now: DateTime<Utc>) -> bool {
        self.hours.as_ref().is_some_and(|h| !h.is_open(now))
    }
}

/// What the session does for the walk.
#[derive(Debug, Clone, PartialEq)]
pub enum IvrAction {
    /// Play this prompt now, stopping whatever plays; report its end with
    /// [`IvrWalk::on_prompt_finished`].
    Play { prompt: String },
    /// Stop the prompt: the caller pressed a key over it.
    StopPrompt,
    /// (Re)arm the single input timer; report it with [`IvrWalk::on_timeout`].
    StartTimer { after: Duration },
    /// Disarm the input timer.
    CancelTimer,
    /// A valid member PIN: add this to the caller's priority in every queue.
    RaisePriority(u32),
    /// Leave the IVR for a Queue, Seat, Voicemail or Hangup (never `Menu`: the walk follows
    /// menu routes itself).
    Route(Route),
}

/// What happened in a menu, as counted in `switchboard_ivr_paths_total{menu, choice}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IvrChoice {
    /// A key that is one of the menu's options.
    Digit(char),
    /// A key that is not an option.
    Invalid,
    /// No key before the input timer fired.
    Timeout,
    /// The retries were used up; the caller went to the failure route.
    Failure,
    /// The center was closed; the caller went to the after-hours route.
    AfterHours,
    /// A member PIN that is in the list.
    PinValid,
    /// A member PIN that is not (or an empty or broken entry).
    PinInvalid,
}

impl IvrChoice {
    /// The `choice` label value.
    pub fn label(&self) -> Cow<'static, str> {
        match self {
            Self::Digit(d) => Cow::Owned(d.to_string()),
            Self::Invalid => "invalid".into(),
            Self::Timeout => "timeout".into(),
            Self::Failure => "failure".into(),
            Self::AfterHours => "after-hours".into(),
            Self::PinValid => "pin-valid".into(),
            Self::PinInvalid => "pin-invalid".into(),
        }
    }
}

/// One step of a caller's way through the menus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvrStep {
    /// The menu (always one of the configuration's menus).
    pub menu: String,
    pub choice: IvrChoice,
}

/// Why a walk left the IVR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrExitReason {
    /// The caller's key or valid PIN chose the route.
    Selected,
    /// The retries of a menu were used up (its `onFailure`, or hang-up).
    RetriesExhausted,
    /// A menu's after-hours route.
    AfterHours,
    /// More than [`MAX_MENU_HOPS`] menus in a row without a key: a configuration loop.
    MenuLoop,
    /// A route named a menu that does not exist (the configuration changed under the call).
    UnknownMenu(String),
    /// More than [`MAX_CALLER_KEYS`] keys.
    KeyLimit,
}

/// How a walk ended.
#[derive(Debug, Clone, PartialEq)]
pub struct IvrExit {
    pub route: Route,
    pub reason: IvrExitReason,
}

/// What a walk is doing between events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Playing an invalid/timeout notice; the menu prompt follows.
    Notice,
    /// Playing the menu prompt; the input timer starts when it ends.
    MenuPrompt,
    /// Waiting for a key with the input timer armed.
    Waiting,
    /// Between an event and the actions it leads to (the input timer just fired); never
    /// seen once an event handler returns.
    Idle,
    /// Left the IVR.
    Done,
}

/// PIN digits entered so far; `Debug` shows only how many, so a logged walk leaks no PIN.
#[derive(Clone, Default)]
struct PinEntry(String);

impl std::fmt::Debug for PinEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinEntry({} digits)", self.0.len())
    }
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    Invalid,
    Timeout,
    PinInvalid,
}

/// Where one caller is in the IVR.
#[derive(Debug, Clone)]
pub struct IvrWalk {
    menu: String,
    retries: u32,
    pin_digits: PinEntry,
    phase: Phase,
    hops_without_key: u32,
    keys: u32,
    /// PIN menus whose boost the caller already got: re-entering one does not add it again.
    boosted: BTreeSet<String>,
    path: Vec<IvrStep>,
    /// How much of `path` [`IvrWalk::take_steps`] handed out already.
    taken: usize,
    exit: Option<IvrExit>,
}

impl IvrWalk {
    /// A caller enters `menu` (from an entry point). If the menu has an after-hours route and
    /// the center is closed, that route is taken instead (into another menu, or out).
    pub fn start(ivr: &Ivr, menu: &str, now: DateTime<Utc>) -> (Self, Vec<IvrAction>) {
        let mut walk = Self {
            menu: menu.to_string(),
            retries: 0,
            pin_digits: PinEntry::default(),
            phase: Phase::Idle,
            hops_without_key: 0,
            keys: 0,
            boosted: BTreeSet::new(),
            path: Vec::new(),
            taken: 0,
            exit: None,
        };
        let mut actions = Vec::new();
        let route = Route {
            action: RouteAction::Menu,
            target: Some(menu.to_string()),
        };
        walk.follow(ivr, route, IvrExitReason::Selected, now, &mut actions);
        (walk, actions)
    }

    /// The prompt of the last `Play` ended: after a notice the menu prompt plays again; after
    /// the menu prompt the walk waits for a key.
    pub fn on_prompt_finished(&mut self, ivr: &Ivr) -> Vec<IvrAction> {
        let mut actions = Vec::new();
        let finished = self.phase;
        if !matches!(finished, Phase::Notice | Phase::MenuPrompt) {
            return actions;
        }
        // The prompt is over: nothing to stop from here on.
        self.phase = Phase::Idle;
        let Some(menu) = self.current_menu(ivr, &mut actions) else {
            return actions;
        };
        if finished == Phase::Notice {
            self.play(Phase::MenuPrompt, &menu.prompt, &mut actions);
        } else {
            self.arm_timer(menu, &mut actions);
        }
        actions
    }

    /// The caller pressed `digit`, during a prompt (barge-in) or while the walk waits.
    pub fn on_digit(&mut self, ivr: &Ivr, digit: char, now: DateTime<Utc>) -> Vec<IvrAction> {
        let mut actions = Vec::new();
        if self.phase == Phase::Done {
            return actions;
        }
        let Some(menu) = self.current_menu(ivr, &mut actions) else {
            return actions;
        };
        self.hops_without_key = 0;
        self.keys = self.keys.saturating_add(1);
        if self.keys > MAX_CALLER_KEYS {
            tracing::warn!(menu = %menu.name, keys = self.keys, "caller pressed too many keys in the IVR");
            self.silence(&mut actions);
            self.record(&menu.name, IvrChoice::Failure);
            // Not into another menu: that would hand the runaway keys more menus.
            let route = Some(menu.failure_route())
                .filter(|r| r.action != RouteAction::Menu)
                .unwrap_or_else(hangup);
            self.leave(route, IvrExitReason::KeyLimit, &mut actions);
            return actions;
        }
        match &menu.pin {
            Some(pin) => self.pin_digit(ivr, menu, pin, digit, now, &mut actions),
            None => {
                self.silence(&mut actions);
                match menu.options.get(&digit) {
                    Some(route) => {
                        self.record(&menu.name, IvrChoice::Digit(digit));
                        self.follow(
                            ivr,
                            route.clone(),
                            IvrExitReason::Selected,
                            now,
                            &mut actions,
                        );
                    }
                    None => self.fail(ivr, menu, Failure::Invalid, now, &mut actions),
                }
            }
        }
        actions
    }

    /// The input timer fired: a timeout (or, with PIN digits entered, the end of the PIN).
    pub fn on_timeout(&mut self, ivr: &Ivr, now: DateTime<Utc>) -> Vec<IvrAction> {
        let mut actions = Vec::new();
        if self.phase != Phase::Waiting {
            return actions;
        }
        // The timer is spent: nothing to cancel from here on.
        self.phase = Phase::Idle;
        let Some(menu) = self.current_menu(ivr, &mut actions) else {
            return actions;
        };
        match &menu.pin {
            Some(pin) if !self.pin_digits.0.is_empty() => {
                self.submit_pin(ivr, menu, pin, now, &mut actions);
            }
            _ => self.fail(ivr, menu, Failure::Timeout, now, &mut actions),
        }
        actions
    }

    /// Every step taken so far, first to last.
    pub fn path(&self) -> &[IvrStep] {
        &self.path
    }

    /// The steps taken since the last call, for [`IvrMetrics::count`].
    pub fn take_steps(&mut self) -> Vec<IvrStep> {
        let steps = self.path.get(self.taken..).unwrap_or_default().to_vec();
        self.taken = self.path.len();
        steps
    }

    /// The menu the caller is in (or was in last).
    pub fn menu(&self) -> &str {
        &self.menu
    }

    /// Retries used in the current menu.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// How the walk ended, once it has.
    pub fn exit(&self) -> Option<&IvrExit> {
        self.exit.as_ref()
    }

    /// Whether the walk has left the IVR.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether a prompt is playing (for tests and the session's sanity checks).
    pub fn is_playing(&self) -> bool {
        matches!(self.phase, Phase::Notice | Phase::MenuPrompt)
    }

    /// Whether the walk waits for a key with the input timer armed.
    pub fn is_waiting(&self) -> bool {
        self.phase == Phase::Waiting
    }

    fn pin_digit(
        &mut self,
        ivr: &Ivr,
        menu: &Menu,
        pin: &PinMenu,
        digit: char,
        now: DateTime<Utc>,
        actions: &mut Vec<IvrAction>,
    ) {
        match digit {
            '0'..='9' => {
                self.pin_digits.0.push(digit);
                if self.pin_digits.0.len() >= pin.max_digits {
                    self.silence(actions);
                    self.submit_pin(ivr, menu, pin, now, actions);
                } else {
                    self.stop_prompt(actions);
                    self.arm_timer(menu, actions);
                }
            }
            '*' => {
                self.pin_digits.0.clear();
                self.stop_prompt(actions);
                self.arm_timer(menu, actions);
            }
            '#' => {
                self.silence(actions);
                self.submit_pin(ivr, menu, pin, now, actions);
            }
            _ => {
                self.silence(actions);
                self.fail(ivr, menu, Failure::PinInvalid, now, actions);
            }
        }
    }

    fn submit_pin(
        &mut self,
        ivr: &Ivr,
        menu: &Menu,
        pin: &PinMenu,
        now: DateTime<Utc>,
        actions: &mut Vec<IvrAction>,
    ) {
        let entered = std::mem::take(&mut self.pin_digits).0;
        let valid = !entered.is_empty()
            && ivr
                .pins
                .get(&menu.name)
                .is_some_and(|set| set.contains(&entered));
        if !valid {
            self.fail(ivr, menu, Failure::PinInvalid, now, actions);
            return;
        }
        self.record(&menu.name, IvrChoice::PinValid);
        if self.boosted.insert(menu.name.clone()) {
            actions.push(IvrAction::RaisePriority(pin.priority_boost));
        }
        self.follow(
            ivr,
            pin.on_valid.clone(),
            IvrExitReason::Selected,
            now,
            actions,
        );
    }

    /// An invalid key, a timeout or a wrong PIN: the menu again, or its failure route once the
    /// retries are used up. The caller has already silenced the prompt and timer.
    fn fail(
        &mut self,
        ivr: &Ivr,
        menu: &Menu,
        failure: Failure,
        now: DateTime<Utc>,
        actions: &mut Vec<IvrAction>,
    ) {
        self.pin_digits.0.clear();
        let (choice, notice) = match failure {
            Failure::Invalid => (IvrChoice::Invalid, &menu.invalid_prompt),
            Failure::PinInvalid => (IvrChoice::PinInvalid, &menu.invalid_prompt),
            Failure::Timeout => (IvrChoice::Timeout, &menu.timeout_prompt),
        };
        self.record(&menu.name, choice);
        if self.retries >= menu.max_retries {
            self.record(&menu.name, IvrChoice::Failure);
            self.follow(
                ivr,
                menu.failure_route(),
                IvrExitReason::RetriesExhausted,
                now,
                actions,
            );
            return;
        }
        self.retries += 1;
        match notice {
            Some(prompt) => self.play(Phase::Notice, prompt, actions),
            None => self.play(Phase::MenuPrompt, &menu.prompt, actions),
        }
    }

    /// Takes `route`: menus are entered here (after-hours first), anything else leaves.
    fn follow(
        &mut self,
        ivr: &Ivr,
        mut route: Route,
        mut reason: IvrExitReason,
        now: DateTime<Utc>,
        actions: &mut Vec<IvrAction>,
    ) {
        // Iterative so that an after-hours chain cannot recurse without bound.
        loop {
            if route.action != RouteAction::Menu {
                self.leave(route, reason, actions);
                return;
            }
            let name = route.target.clone().unwrap_or_default();
            self.hops_without_key += 1;
            if self.hops_without_key > MAX_MENU_HOPS {
                tracing::warn!(
                    menu = %name,
                    from = %self.menu,
                    hops = MAX_MENU_HOPS,
                    "IVR menus route to each other without caller input; hanging up"
                );
                self.leave(hangup(), IvrExitReason::MenuLoop, actions);
                return;
            }
            let Some(menu) = ivr.menus.get(&name) else {
                tracing::warn!(menu = %name, from = %self.menu, "IVR route names an unknown menu; hanging up");
                self.leave(hangup(), IvrExitReason::UnknownMenu(name), actions);
                return;
            };
            self.menu = name;
            self.retries = 0;
            self.pin_digits.0.clear();
            if let Some(after) = &menu.after_hours
                && ivr.is_closed(now)
            {
                self.record(&menu.name, IvrChoice::AfterHours);
                route = after.clone();
                reason = IvrExitReason::AfterHours;
                continue;
            }
            self.play(Phase::MenuPrompt, &menu.prompt, actions);
            return;
        }
    }

    /// The current menu, or — if the configuration lost it — hang up.
    fn current_menu<'a>(&mut self, ivr: &'a Ivr, actions: &mut Vec<IvrAction>) -> Option<&'a Menu> {
        let menu = ivr.menus.get(&self.menu);
        if menu.is_none() {
            tracing::warn!(menu = %self.menu, "caller's IVR menu is gone from the configuration; hanging up");
            self.silence(actions);
            let reason = IvrExitReason::UnknownMenu(self.menu.clone());
            self.leave(hangup(), reason, actions);
        }
        menu
    }

    fn leave(&mut self, route: Route, reason: IvrExitReason, actions: &mut Vec<IvrAction>) {
        tracing::debug!(menu = %self.menu, action = ?route.action, target = ?route.target, ?reason, "caller leaves the IVR");
        self.phase = Phase::Done;
        self.pin_digits.0.clear();
        actions.push(IvrAction::Route(route.clone()));
        self.exit = Some(IvrExit { route, reason });
    }

    fn play(&mut self, phase: Phase, prompt: &str, actions: &mut Vec<IvrAction>) {
        self.phase = phase;
        actions.push(IvrAction::Play {
            prompt: prompt.to_string(),
        });
    }

    fn arm_timer(&mut self, menu: &Menu, actions: &mut Vec<IvrAction>) {
        self.phase = Phase::Waiting;
        actions.push(IvrAction::StartTimer {
            after: menu.timeout,
        });
    }

    /// Barge-in: a key over a prompt stops it.
    fn stop_prompt(&mut self, actions: &mut Vec<IvrAction>) {
        if self.is_playing() {
            actions.push(IvrAction::StopPrompt);
        }
    }

    /// Stops the prompt or disarms the timer, whichever is running.
    fn silence(&mut self, actions: &mut Vec<IvrAction>) {
        match self.phase {
            Phase::Notice | Phase::MenuPrompt => actions.push(IvrAction::StopPrompt),
            Phase::Waiting => actions.push(IvrAction::CancelTimer),
            Phase::Idle | Phase::Done => {}
        }
    }

    fn record(&mut self, menu: &str, choice: IvrChoice) {
        self.path.push(IvrStep {
            menu: menu.to_string(),
            choice,
        });
    }
}

/// `switchboard_ivr_paths_total{menu, choice}`: what callers did in each menu. Both labels
/// come from the configuration (menu names, option keys) or a fixed set, so the series stay
/// bounded whatever callers press.
#[derive(Debug, Clone)]
pub struct IvrMetrics {
    paths: IntCounterVec,
}

impl IvrMetrics {
    /// Registers the counter with the node's registry.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let paths = IntCounterVec::new(
            Opts::new(
                "switchboard_ivr_paths_total",
                "IVR steps by menu and choice: an option key, invalid, timeout, failure, \
                 after-hours, pin-valid or pin-invalid.",
            ),
            &["menu", "choice"],
        )?;
        registry.register(Box::new(paths.clone()))?;
        Ok(Self { paths })
    }

    /// Counts steps from [`IvrWalk::take_steps`].
    pub fn count(&self, steps: &[IvrStep]) {
        for step in steps {
            let choice = step.choice.label();
            self.paths
                .with_label_values(&[step.menu.as_str(), choice.as_ref()])
                .inc();
        }
    }
}
