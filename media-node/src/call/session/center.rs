//! Calls the node answers itself: IVR menus, queues, voicemail and feature codes.
//!
//! The caller's leg is answered at once (200 with the node's SDP, or its offer for a late
//! offer) and the media runs caller-only: prompts, music on hold and tones play into it and
//! its RFC 4733 keys drive the IVR walk ([`crate::ivr`]). A queued caller is registered with
//! the call-center runtime, whose ACD sends this task offers ([`CenterCommand`]); each seat
//! of an offer is rung with its own INVITE client transaction (a *fork*: ring-all rings
//! several in parallel, all offered the same SDP). The first seat to answer becomes the
//! call's callee leg, its media is attached and the call goes on as an ordinary bridged call
//! (re-INVITEs passed across, recording, BYE either side); the other forks are cancelled. A
//! 2xx that comes too late (the ring timeout passed, another seat answered, the caller left)
//! is ACKed and hung up at once.
//!
//! Every way a call ends goes through [`CallSession::center_finish`]: a queued caller is
//! abandoned in the ACD (seats ringing for them are Ready again), a connected agent's call is
//! ended (wrap-up), forks still ringing are cancelled. So no agent stays Ringing or Busy for
//! a call that is gone.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use switchboard_crds::callcenter::{Route, RouteAction};
use switchboard_crds::queue::NoAgentsAction;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};

use super::{
    AgreedAudio, CALL_QUEUE, CallEngine, CallEvent, CallSession, CalleeState, CallerState,
    ClientRequest, DialogSide, LegSdp, RequestLine, Retransmit, SetupError, TRANSACTION_TIMEOUT,
    branch, leg_peer,
};
use crate::acd::{AgentRequest, CallKey, CallerInfo, OfferFailure, Refusal};
use crate::call::relay::{
    Leg, MediaEvent, MediaLeg, MediaSession, PlaybackEnd, PlaybackId, RelayMetrics, RelayStats,
};
use crate::call::routing::CenterRoute;
use crate::call::trunks::ChannelGuard;
use crate::center::{CallCenterRuntime, CallerLine, CenterCommand, CenterPlan};
use crate::ivr::{IvrAction, IvrWalk};
use crate::media::prompts::number_prompts;
use crate::media::tone::ToneSpec;
use crate::recording::cdr::{CallDirection, CallOutcome};
use crate::recording::sidecar::HangupSide;
use crate::recording::voicemail::{GENERAL_MAILBOX, Mailboxes, VoicemailMessage};
use crate::recording::wav_writer::{CallRecorder, RecorderOptions, RecordingSummary};
use crate::sdp::{Direction, LocalMedia, answer_offer, build_offer};
use crate::sip::Transport;
use crate::sip::message::{
    NameAddr, SipRequest, SipResponse, build_response_with_body, random_tag, split_list,
};

use crate::call::relay::Playback;

/// Played when a queue refuses the caller or the center cannot take the call.
const UNAVAILABLE: &str = "queue/unavailable.wav";

/// A call the node answers itself, about to be set up.
pub struct CenterSetup<'a> {
    pub invite: &'a SipRequest,
    pub source: SocketAddr,
    pub transport: Transport,
    /// The caller: a seat's extension or the number a trunk sent.
    pub caller: String,
    /// The number dialed.
    pub dialed: String,
    pub direction: CallDirection,
    pub route: CenterRoute,
    pub center: Arc<CallCenterRuntime>,
}

/// Where the call is in the center.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Answered; the first route not taken yet.
    Starting,
    Ivr,
    /// In a queue: music on hold and announcements; offered seats may be ringing.
    Queued,
    /// Ringing one seat directly (a route to a seat): ringback, then the seat's voicemail.
    RingingSeat,
    /// Talking to an agent.
    Bridged,
    /// The agent hung up first; the caller rates the call.
    Survey,
    /// Greeting and tone, then the message is recorded.
    Voicemail,
    /// A last announcement, then the node hangs up.
    Closing,
    Done,
}

/// What follows the last prompt of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Nothing,
    /// Tell the IVR walk its prompt finished.
    Ivr,
    HoldMusic,
    HangUp,
    RecordMessage,
    SurveyKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForkState {
    /// INVITE sent, nothing heard.
    Calling,
    /// A provisional response came: ringing.
    Proceeding,
    /// CANCEL sent, the final response not in yet.
    Cancelling,
    Answered,
    Failed,
}

/// One seat rung for the caller: an INVITE client transaction of its own.
#[derive(Debug)]
struct Fork {
    seat: String,
    dialog: DialogSide,
    branch: String,
    uri: String,
    cseq: u32,
    state: ForkState,
    /// Timer A; `None` after a provisional response (or over TCP).
    invite: Option<Retransmit>,
    /// Timer B before a provisional; after a CANCEL, how long its final is waited for.
    deadline: Instant,
    /// CANCEL as soon as a provisional response allows it (RFC 3261 §9.1).
    cancel_wanted: bool,
    /// The ACD waits for this fork's outcome (not after the ACD itself gave up on it).
    report: bool,
    /// The ACK of the final response, re-sent when the final is retransmitted.
    ack: Option<super::Outbound>,
}

impl Fork {
    fn live(&self) -> bool {
        matches!(
            self.state,
            ForkState::Calling | ForkState::Proceeding | ForkState::Cancelling
        )
    }
}

#[derive(Debug)]
struct Queued {
    key: CallKey,
    /// The queue the ACD has the caller in now (an overflow step may have moved them).
    queue: String,
    /// When the caller entered the first queue: the order the ACD keeps across moves.
    since: Instant,
    next_announcement: Option<Instant>,
}

#[derive(Debug)]
struct ConnectedAgent {
    seat: String,
    /// The queue the call came through (`None`: a seat rung directly).
    queue: Option<String>,
    since: Instant,
}

#[derive(Debug)]
struct Voicemail {
    mailbox: String,
    queue: Option<String>,
    /// Set once recording started.
    message: Option<(String, PathBuf, DateTime<Utc>)>,
    deadline: Option<Instant>,
}

/// The center's side of one call.
pub(super) struct CenterCall {
    runtime: Arc<CallCenterRuntime>,
    plan: Arc<CenterPlan>,
    route: Option<CenterRoute>,
    /// The call task's own queue: forks register it, the ACD reaches the call through it.
    tx: mpsc::Sender<CallEvent>,
    events: Option<broadcast::Receiver<MediaEvent>>,
    phase: Phase,
    script: VecDeque<Playback>,
    then: Then,
    playing: Option<PlaybackId>,
    /// A prompt could not be played: the script goes on at the next wake-up.
    skip_due: bool,
    walk: Option<IvrWalk>,
    ivr_path: Vec<String>,
    input_deadline: Option<Instant>,
    boost: u32,
    queue_name: Option<String>,
    queued: Option<Queued>,
    waited: Option<Duration>,
    forks: Vec<Fork>,
    /// The agent leg's sockets, bound at the first offer and attached at the answer.
    b_media: Option<MediaLeg>,
    direct_seat: Option<(String, Instant)>,
    agent: Option<ConnectedAgent>,
    agent_answered: bool,
    served: bool,
    survey: Option<u8>,
    voicemail: Option<Voicemail>,
    outcome: Option<CallOutcome>,
}

/// The next media event of a center call; never ready for other calls.
pub(super) async fn media_event(center: &mut Option<Box<CenterCall>>) -> MediaEvent {
    let Some(events) = center.as_mut().and_then(|c| c.events.as_mut()) else {
        return std::future::pending().await;
    };
    loop {
        match events.recv().await {
            Ok(event) => return event,
            // Only key presses and playback ends travel here; a burst beyond the buffer loses
            // the oldest, which a caller repeats.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

impl CenterCall {
    /// A center call before its first route (`route`), answered on the node's media
    /// (`events`: its key presses and playback ends).
    pub(super) fn new(
        runtime: Arc<CallCenterRuntime>,
        tx: mpsc::Sender<CallEvent>,
        events: broadcast::Receiver<MediaEvent>,
        route: Option<CenterRoute>,
    ) -> Self {
        let plan = runtime.plan();
        Self {
            runtime,
            plan,
            route,
            tx,
            events: Some(events),
            phase: Phase::Starting,
            script: VecDeque::new(),
            then: Then::Nothing,
            playing: None,
            skip_due: false,
            walk: None,
            ivr_path: Vec::new(),
            input_deadline: None,
            boost: 0,
            queue_name: None,
            queued: None,
            waited: None,
            forks: Vec::new(),
            b_media: None,
            direct_seat: None,
            agent: None,
            agent_answered: false,
            served: false,
            survey: None,
            voicemail: None,
            outcome: None,
        }
    }

    /// The connected agent's call is over: a queue call goes to wrap-up, a direct one frees
    /// the phone.
    fn agent_call_over(&mut self, now: Instant) {
        let Some(agent) = self.agent.take() else {
            return;
        };
        match &agent.queue {
            Some(queue) => {
                let talk = now.saturating_duration_since(agent.since);
                self.runtime.queue_call_ended(&agent.seat, queue, talk);
            }
            None => self.runtime.direct_call_ended(&agent.seat),
        }
    }

    pub(super) fn fork_call_ids(&self) -> impl Iterator<Item = &str> {
        self.forks.iter().map(|f| f.dialog.call_id.as_str())
    }

    /// Whether no fork still waits for a response.
    pub(super) fn forks_done(&self, now: Instant) -> bool {
        self.forks.iter().all(|f| !f.live() || now >= f.deadline)
    }

    pub(super) fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        [
            self.skip_due.then_some(now),
            self.input_deadline,
            self.queued.as_ref().and_then(|q| q.next_announcement),
            self.voicemail.as_ref().and_then(|v| v.deadline),
            self.direct_seat.as_ref().map(|(_, until)| *until),
        ]
        .into_iter()
        .flatten()
        .chain(
            self.forks
                .iter()
                .filter(|f| f.live())
                .map(|f| match &f.invite {
                    Some(r) => r.wake(),
                    None => f.deadline,
                }),
        )
        .min()
    }

    /// The CDR outcome: `fallback` is what the B2BUA would say for how the call ended.
    pub(super) fn outcome(&self, fallback: CallOutcome) -> CallOutcome {
        if self.agent_answered || self.served {
            CallOutcome::Answered
        } else if self.voicemail.as_ref().is_some_and(|v| v.message.is_some()) {
            CallOutcome::Voicemail
        } else if let Some(outcome) = self.outcome {
            outcome
        } else if fallback == CallOutcome::Answered {
            // The caller hung up before an agent took the call.
            CallOutcome::Abandoned
        } else {
            fallback
        }
    }

    /// While the caller waits in a queue: the queue, when they entered the first one and
    /// their priority boost.
    pub(super) fn queue_place(&self) -> Option<(&str, Instant, u32)> {
        let q = self.queued.as_ref()?;
        (self.phase == Phase::Queued).then_some((q.queue.as_str(), q.since, self.boost))
    }

    pub(super) fn queue_name(&self) -> Option<String> {
        self.queue_name.clone()
    }

    pub(super) fn waited(&self) -> Option<Duration> {
        self.waited
    }

    pub(super) fn survey_score(&self) -> Option<u8> {
        self.survey
    }

    pub(super) fn ivr_path(&self) -> Vec<String> {
        self.ivr_path.clone()
    }

    fn take_walk_steps(&mut self) {
        if let Some(walk) = self.walk.as_mut() {
            let steps = walk.take_steps();
            self.runtime.count_ivr_steps(&steps);
            self.ivr_path.extend(
                steps
                    .iter()
                    .map(|s| format!("{}:{}", s.menu, s.choice.label())),
            );
        }
    }
}

impl CallEngine {
    /// Answers a call the node serves itself (IVR, queue, voicemail, feature code) and
    /// starts its task. Returns the 100 Trying for the caller; on error, the status to refuse
    /// the INVITE with.
    pub fn start_center_call(
        self: &Arc<Self>,
        setup: CenterSetup<'_>,
        channel: Option<ChannelGuard>,
    ) -> Result<Vec<u8>, SetupError> {
        if self.at_capacity() {
            return Err(SetupError::AtCapacity);
        }
        let invite = setup.invite;
        let (offer, local) = self.caller_offer(invite)?;
        let caller_media = MediaLeg::bind(&self.ports, self.media_bind())?;
        let a_local = LocalMedia {
            rtp_port: caller_media.rtp_port(),
            ..local.clone()
        };
        // With an offer the 200 answers it; without (late offer) the 200 offers every codec
        // and the caller's ACK answers.
        let (answer, negotiated) = match &offer {
            Some(offer) => {
                let (answer, n) = answer_offer(offer, &self.settings.codecs, &a_local)?;
                (answer.to_string().into_bytes(), Some(n))
            }
            None => (
                build_offer(&a_local, &self.settings.codecs)
                    .to_string()
                    .into_bytes(),
                None,
            ),
        };
        let stats = Arc::new(RelayStats::default());
        let media = MediaSession::start_caller_only(
            caller_media,
            Arc::clone(&stats),
            self.node_media(),
            self.metrics.as_ref().map(RelayMetrics::from_sip),
        );
        if let Some(n) = &negotiated {
            media.set_peer(Leg::Caller, leg_peer(n));
        }
        let events = media.events();
        let a_sdp = LegSdp {
            local: LocalMedia {
                direction: negotiated
                    .as_ref()
                    .map_or(Direction::SendRecv, |n| n.remote_direction.answer()),
                ..a_local.clone()
            },
            audio: negotiated.as_ref().map(AgreedAudio::of),
            last: answer.clone(),
        };
        let b_sdp = LegSdp {
            local: LocalMedia {
                session_id: local.session_id + 1,
                ..local
            },
            audio: None,
            last: Vec::new(),
        };
        let (a, a_tag, a_response_to) =
            DialogSide::of_caller(invite, setup.source, setup.transport);
        let b = DialogSide::placeholder(setup.source, setup.transport);
        let trying = build_response_with_body(invite, 100, "Trying", setup.source, None, &[], None);
        let (sender, rx) = mpsc::channel(CALL_QUEUE);
        self.register_leg(&a.call_id, Leg::Caller, &sender);
        self.call_started();
        info!(
            call_id = a.call_id,
            caller = setup.caller,
            dialed = setup.dialed,
            route = setup.route.label(),
            "call answered by the node"
        );
        let trunk = channel.as_ref().map(|c| Arc::clone(c.trunk()));
        let center = CenterCall::new(setup.center, sender, events, Some(setup.route));
        let session = CallSession {
            caller_ext: setup.caller,
            callee_ext: setup.dialed,
            direction: setup.direction,
            trunk,
            channel,
            a_invite: Some(invite.clone()),
            a_source: setup.source,
            a_response_to,
            a_tag,
            a_answer: answer,
            a_last_response: trying.clone(),
            caller_answer_due: negotiated.is_none(),
            center: Some(Box::new(center)),
            ..CallSession::blank(Arc::clone(self), rx, (a, a_sdp), (b, b_sdp), media, stats)
        };
        tokio::spawn(session.run(super::Start::Answer));
        Ok(trying)
    }
}

/// How an offered seat's refusal counts for the ACD.
fn offer_failure(status: u16) -> OfferFailure {
    match status {
        486 | 600 | 603 => OfferFailure::Declined,
        408 | 480 | 487 => OfferFailure::NoAnswer,
        _ => OfferFailure::Unreachable,
    }
}

/// The voicemail tone: 1 kHz for half a second, once.
fn record_tone() -> ToneSpec {
    ToneSpec::new(
        &[1000.0],
        -13.0,
        &[crate::media::tone::CadenceStep {
            on_ms: 500,
            off_ms: 0,
        }],
        false,
    )
}

impl CallSession {
    fn center_mut(&mut self) -> Option<&mut CenterCall> {
        self.center.as_deref_mut()
    }

    /// Answers the caller and takes the call's first route.
    pub(super) fn center_start(&mut self, now: Instant) {
        self.respond_caller(200, "OK", true, now);
        let Some(route) = self.center_mut().and_then(|c| c.route.take()) else {
            return;
        };
        match route {
            CenterRoute::Menu(menu) => self.start_menu(&menu, now),
            CenterRoute::Queue(queue) => self.enter_queue(&queue, now, now),
            CenterRoute::Voicemail { mailbox } => self.start_voicemail(mailbox, None),
            CenterRoute::FeatureCode(request) => self.feature_code(request),
        }
    }

    // ---- prompts ------------------------------------------------------------------------

    fn prompt(&self, path: &str) -> Option<Playback> {
        let Some(store) = self.engine.prompts() else {
            warn!(
                call_id = self.a.call_id,
                path, "no prompt directory configured; prompt skipped"
            );
            return None;
        };
        match store.get(path) {
            Ok(prompt) => Some(Playback::once(prompt)),
            Err(error) => {
                warn!(call_id = self.a.call_id, %error, "prompt skipped");
                None
            }
        }
    }

    /// Plays prompts one after the other into the caller's leg, then does `then`.
    fn play_script(&mut self, prompts: &[String], extra: Option<Playback>, then: Then) {
        let playbacks: VecDeque<Playback> = prompts
            .iter()
            .filter_map(|p| self.prompt(p))
            .chain(extra)
            .collect();
        let Some(c) = self.center_mut() else {
            return;
        };
        c.script = playbacks;
        c.then = then;
        c.playing = None;
        c.skip_due = false;
        self.advance_script();
    }

    /// Starts the next playback of the script; with none left, what follows it is due.
    fn advance_script(&mut self) {
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        match (c.script.pop_front(), &self.media) {
            (Some(playback), Some(media)) => {
                c.playing = Some(media.play(Leg::Caller, playback).id());
            }
            // Nothing (more) to play: carry on at the next wake-up, outside this handler.
            _ => c.skip_due = true,
        }
    }

    fn stop_prompts(&mut self) {
        if let Some(c) = self.center.as_deref_mut() {
            c.script.clear();
            c.playing = None;
            c.skip_due = false;
            c.then = Then::Nothing;
        }
        if let Some(media) = &self.media {
            media.stop_playback(Leg::Caller);
        }
    }

    /// The script finished: do what follows it.
    fn script_done(&mut self, now: Instant) {
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let then = std::mem::replace(&mut c.then, Then::Nothing);
        match then {
            Then::Nothing => {}
            Then::Ivr => {
                let plan = Arc::clone(&c.plan);
                let actions = c
                    .walk
                    .as_mut()
                    .map(|w| w.on_prompt_finished(&plan.ivr))
                    .unwrap_or_default();
                self.apply_ivr(actions, now);
            }
            Then::HoldMusic => self.hold_music(),
            Then::HangUp => self.center_hang_up("announcement played", now),
            Then::RecordMessage => self.record_message(now),
            Then::SurveyKey => {
                let timeout = self.survey_spec().map_or(8, |s| s.timeout_seconds);
                if let Some(c) = self.center_mut() {
                    c.input_deadline = Some(now + Duration::from_secs(timeout.into()));
                }
            }
        }
    }

    fn hold_music(&mut self) {
        let moh = self.center.as_deref().and_then(|c| {
            let queue = c.queue_name.as_ref()?;
            Some(c.plan.queues.get(queue)?.music_on_hold.clone())
        });
        let Some(path) = moh else {
            return;
        };
        let looped = self
            .engine
            .prompts()
            .and_then(|s| s.get(&path).ok())
            .map(Playback::looped);
        match (looped, &self.media) {
            (Some(playback), Some(media)) => {
                media.play(Leg::Caller, playback);
            }
            _ => warn!(
                call_id = self.a.call_id,
                path, "music on hold unavailable; the caller waits in silence"
            ),
        }
    }

    /// Plays a last prompt, then hangs up with `outcome`.
    fn close_with(&mut self, prompt: &str, outcome: CallOutcome) {
        if let Some(c) = self.center_mut() {
            c.phase = Phase::Closing;
            c.outcome = Some(outcome);
        }
        self.play_script(&[prompt.to_string()], None, Then::HangUp);
    }

    /// The node hangs up on the caller.
    fn center_hang_up(&mut self, cause: &str, now: Instant) {
        if self.ending.is_some() {
            return;
        }
        if let Some(c) = self.center_mut() {
            c.phase = Phase::Done;
        }
        if matches!(self.a_state, CallerState::Accepted | CallerState::Confirmed) {
            self.a_final = None;
            self.send_bye(Leg::Caller, now);
        }
        if self.b_state == CalleeState::Established {
            self.b_state = CalleeState::Terminated;
            self.send_bye(Leg::Callee, now);
        }
        self.end(HangupSide::Node, cause, CallOutcome::Failed, now);
    }

    // ---- IVR ----------------------------------------------------------------------------

    fn start_menu(&mut self, menu: &str, now: Instant) {
        let Some(c) = self.center_mut() else {
            return;
        };
        c.phase = Phase::Ivr;
        let plan = Arc::clone(&c.plan);
        let (walk, actions) = IvrWalk::start(&plan.ivr, menu, Utc::now());
        c.walk = Some(walk);
        self.apply_ivr(actions, now);
    }

    fn apply_ivr(&mut self, actions: Vec<IvrAction>, now: Instant) {
        for action in actions {
            match action {
                IvrAction::Play { prompt } => self.play_script(&[prompt], None, Then::Ivr),
                IvrAction::StopPrompt => self.stop_prompts(),
                IvrAction::StartTimer { after } => {
                    if let Some(c) = self.center_mut() {
                        c.input_deadline = Some(now + after);
                    }
                }
                IvrAction::CancelTimer => {
                    if let Some(c) = self.center_mut() {
                        c.input_deadline = None;
                    }
                }
                IvrAction::RaisePriority(boost) => {
                    if let Some(c) = self.center_mut() {
                        c.boost = c.boost.saturating_add(boost);
                    }
                }
                IvrAction::Route(route) => {
                    if let Some(c) = self.center_mut() {
                        c.take_walk_steps();
                        c.walk = None;
                        c.input_deadline = None;
                    }
                    self.stop_prompts();
                    self.follow_route(&route, now);
                    return;
                }
            }
        }
    }

    fn follow_route(&mut self, route: &Route, now: Instant) {
        let target = route.target.clone();
        match (route.action, target) {
            (RouteAction::Menu, Some(menu)) => self.start_menu(&menu, now),
            (RouteAction::Queue, Some(queue)) => self.enter_queue(&queue, now, now),
            (RouteAction::Seat, Some(seat)) => self.ring_seat(&seat, now),
            (RouteAction::Voicemail, mailbox) => self.start_voicemail(mailbox, None),
            (RouteAction::Hangup, _) => {
                if let Some(c) = self.center_mut() {
                    c.outcome = Some(CallOutcome::Abandoned);
                    c.served = c.ivr_path.iter().any(|s| !s.ends_with(":timeout"));
                }
                self.center_hang_up("IVR hang-up route", now);
            }
            (action, None) => {
                warn!(call_id = self.a.call_id, ?action, "route without a target");
                self.close_with(UNAVAILABLE, CallOutcome::Failed);
            }
        }
    }

    // ---- queue --------------------------------------------------------------------------

    /// Puts the caller in `queue`, in the order of `since` (when they entered their first
    /// queue: now, or before a takeover).
    fn enter_queue(&mut self, queue: &str, since: Instant, now: Instant) {
        let caller = CallerInfo {
            number: self.caller_ext.clone(),
            priority_boost: self.center.as_deref().map_or(0, |c| c.boost),
        };
        let Some(c) = self.center_mut() else {
            return;
        };
        c.queue_name = Some(queue.to_string());
        let Some(spec) = c.plan.queues.get(queue).cloned() else {
            warn!(queue, "route to a queue this node does not have");
            self.close_with(UNAVAILABLE, CallOutcome::Failed);
            return;
        };
        let tx = c.tx.clone();
        let line: CallerLine =
            Box::new(move |command| tx.try_send(CallEvent::Center(command)).is_ok());
        match c.runtime.enqueue(queue, caller, line, since) {
            Ok((key, position)) => {
                let every = Duration::from_secs(spec.announcements.every_seconds.into());
                let announce = spec.announcements.position || spec.announcements.estimated_wait;
                c.queued = Some(Queued {
                    key,
                    queue: queue.to_string(),
                    since,
                    next_announcement: announce.then_some(now + every),
                });
                c.phase = Phase::Queued;
                debug!(
                    call_id = self.a.call_id,
                    queue, position, "caller waits in the queue"
                );
                self.hold_music();
                self.replicate();
            }
            Err(Refusal::NoAgentsLoggedIn(NoAgentsAction::Voicemail)) => {
                info!(
                    call_id = self.a.call_id,
                    queue, "no agent logged in: voicemail"
                );
                self.start_voicemail(None, Some(queue.to_string()));
            }
            Err(refusal) => {
                info!(call_id = self.a.call_id, queue, %refusal, "queue refused the caller");
                self.close_with(UNAVAILABLE, CallOutcome::Failed);
            }
        }
    }

    /// Position and estimated wait, then music on hold again.
    fn announce(&mut self, now: Instant) {
        let Some(c) = self.center_mut() else {
            return;
        };
        let Some(q) = c.queued.as_mut() else {
            return;
        };
        let Some((queue, position, wait)) = c.runtime.queue_position(q.key) else {
            q.next_announcement = None;
            return;
        };
        let Some(spec) = c.plan.queues.get(&queue) else {
            return;
        };
        q.next_announcement =
            Some(now + Duration::from_secs(spec.announcements.every_seconds.into()));
        let mut prompts = Vec::new();
        if spec.announcements.position {
            prompts.push("queue/caller-number.wav".to_string());
            prompts.extend(number_prompts(u32::try_from(position).unwrap_or(u32::MAX)));
            prompts.push("queue/in-line.wav".to_string());
        }
        if spec.announcements.estimated_wait {
            let minutes = wait.as_secs().div_ceil(60);
            if minutes <= 1 && wait < Duration::from_secs(60) {
                prompts.push("queue/less-than-a-minute.wav".to_string());
            } else {
                prompts.push("queue/estimated-wait.wav".to_string());
                prompts.extend(number_prompts(u32::try_from(minutes).unwrap_or(u32::MAX)));
                prompts.push(
                    if minutes == 1 {
                        "queue/minute.wav"
                    } else {
                        "queue/minutes.wav"
                    }
                    .to_string(),
                );
            }
        }
        self.play_script(&prompts, None, Then::HoldMusic);
    }

    /// What the ACD asks of this caller.
    pub(super) fn on_center_command(&mut self, command: CenterCommand, now: Instant) {
        if let CenterCommand::Offer { queue, .. } = &command {
            self.queued_in(queue);
        }
        let Some(c) = self.center.as_deref() else {
            return;
        };
        match command {
            CenterCommand::Offer { seats, .. } => {
                let key = c.queued.as_ref().map(|q| q.key);
                match key {
                    Some(key) if c.phase == Phase::Queued && self.ending.is_none() => {
                        for (seat, extension) in seats {
                            if !self.start_fork(&seat, &extension, true, now)
                                && let Some(runtime) = self.runtime()
                            {
                                runtime.offer_failed(key, &seat, OfferFailure::Unreachable);
                            }
                        }
                    }
                    // Left the queue meanwhile: the seats stay Ready for the next caller.
                    Some(key) => {
                        for (seat, _) in seats {
                            c.runtime.offer_failed(key, &seat, OfferFailure::Declined);
                        }
                    }
                    None => {}
                }
            }
            CenterCommand::StopRinging { seat } => {
                let ringing: Vec<usize> = c
                    .forks
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.seat == seat && f.live())
                    .map(|(i, _)| i)
                    .collect();
                for i in ringing {
                    if let Some(c) = self.center_mut() {
                        c.forks[i].report = false;
                    }
                    self.cancel_fork(i, now);
                }
            }
            CenterCommand::ToVoicemail { queue } => {
                if let Some(c) = self.center_mut() {
                    if let Some(q) = c.queued.take() {
                        c.waited = Some(now.saturating_duration_since(q.since));
                    }
                    for f in &mut c.forks {
                        f.report = false;
                    }
                }
                self.cancel_forks(None, now);
                self.stop_prompts();
                self.start_voicemail(None, Some(queue));
                // Out of the queue into voicemail: no longer a call a standby takes over.
                self.replicate();
            }
        }
    }

    /// The ACD offers the caller from `queue`: an overflow step moved them there when it is
    /// not the queue they were in (their original enqueue time stays).
    fn queued_in(&mut self, queue: &str) {
        let Some(q) = self.center.as_deref_mut().and_then(|c| c.queued.as_mut()) else {
            return;
        };
        if q.queue != queue {
            q.queue = queue.to_string();
            self.replicate();
        }
    }

    fn runtime(&self) -> Option<Arc<CallCenterRuntime>> {
        self.center.as_deref().map(|c| Arc::clone(&c.runtime))
    }

    // ---- forks (offers to seats) ----------------------------------------------------------

    /// Rings a seat's phone for the caller. `false` when it has no registered phone or no
    /// media port is left.
    fn start_fork(&mut self, seat: &str, extension: &str, report: bool, now: Instant) -> bool {
        let Some(contact) = self.engine.seat_contact(extension) else {
            info!(
                call_id = self.a.call_id,
                seat, "offered seat has no registered phone"
            );
            return false;
        };
        if self.center.as_deref().is_some_and(|c| c.b_media.is_none())
            && !self.media.as_ref().is_some_and(|m| m.has_leg(Leg::Callee))
        {
            match MediaLeg::bind(&self.engine.ports, self.engine.media_bind()) {
                Ok(leg) => {
                    self.b_sdp.local.rtp_port = leg.rtp_port();
                    self.b_sdp.last = build_offer(&self.b_sdp.local, &self.engine.settings.codecs)
                        .to_string()
                        .into_bytes();
                    if let Some(c) = self.center_mut() {
                        c.b_media = Some(leg);
                    }
                }
                Err(error) => {
                    warn!(call_id = self.a.call_id, %error, "no media port for the agent leg");
                    return false;
                }
            }
        }
        let realm = self.engine.realm.clone();
        let call_id = format!("{}@switchboard", random_tag());
        let dialog = DialogSide {
            call_id: call_id.clone(),
            local: format!("<sip:{}@{realm}>;tag={}", self.caller_ext, random_tag()),
            remote: format!("<sip:{extension}@{realm}>"),
            remote_target: contact.uri.clone(),
            route: Vec::new(),
            destination: contact.destination(),
            transport: contact.transport,
            local_cseq: 1,
            remote_cseq: 0,
        };
        let fork_branch = branch();
        let line = RequestLine {
            method: "INVITE",
            uri: &contact.uri,
            branch: &fork_branch,
            cseq: 1,
            route: false,
        };
        let offer = self.b_sdp.last.clone();
        let out = self.request_on(&dialog, Leg::Callee, line, Some(&offer));
        let Some(c) = self.center.as_deref_mut() else {
            return false;
        };
        self.engine.register_leg(&call_id, Leg::Callee, &c.tx);
        self.engine.send(out.clone());
        info!(
            call_id = self.a.call_id,
            seat,
            contact = contact.uri,
            "ringing seat"
        );
        c.forks.push(Fork {
            seat: seat.to_string(),
            dialog,
            branch: fork_branch,
            uri: contact.uri,
            cseq: 1,
            state: ForkState::Calling,
            invite: Some(Retransmit::new(out, now, false)),
            deadline: now + TRANSACTION_TIMEOUT,
            cancel_wanted: false,
            report,
            ack: None,
        });
        true
    }

    /// Stops ringing one seat: CANCEL once it has answered provisionally.
    fn cancel_fork(&mut self, i: usize, now: Instant) {
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let Some(fork) = c.forks.get_mut(i) else {
            return;
        };
        match fork.state {
            ForkState::Calling => fork.cancel_wanted = true,
            ForkState::Proceeding => {
                fork.state = ForkState::Cancelling;
                fork.deadline = now + TRANSACTION_TIMEOUT;
                let branch = fork.branch.clone();
                let Some(out) = self.fork_transaction_request(i, "CANCEL") else {
                    return;
                };
                self.engine.send(out.clone());
                self.pending.push(ClientRequest {
                    leg: Leg::Callee,
                    branch: branch.clone(),
                    method: "CANCEL",
                    retransmit: Retransmit::new(out, now, true),
                });
            }
            ForkState::Cancelling | ForkState::Answered | ForkState::Failed => {}
        }
    }

    /// A request in fork `i`'s INVITE transaction — CANCEL, or the ACK of a non-2xx final:
    /// the INVITE's Request-URI, branch and CSeq number, no route set (RFC 3261 §9.1,
    /// §17.1.1.3).
    fn fork_transaction_request(&self, i: usize, method: &str) -> Option<super::Outbound> {
        let fork = self.center.as_deref()?.forks.get(i)?;
        let line = RequestLine {
            method,
            uri: &fork.uri,
            branch: &fork.branch,
            cseq: fork.cseq,
            route: false,
        };
        Some(self.request_on(&fork.dialog, Leg::Callee, line, None))
    }

    /// Cancels every live fork but `keep`.
    fn cancel_forks(&mut self, keep: Option<usize>, now: Instant) {
        let live: Vec<usize> = self
            .center
            .as_deref()
            .map(|c| {
                c.forks
                    .iter()
                    .enumerate()
                    .filter(|(i, f)| f.live() && Some(*i) != keep)
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        for i in live {
            self.cancel_fork(i, now);
        }
    }

    /// A response to a fork's INVITE; `false` when the branch is no fork's.
    pub(super) fn on_fork_response(
        &mut self,
        response: &SipResponse,
        branch_id: &str,
        now: Instant,
    ) -> bool {
        let Some(c) = self.center.as_deref_mut() else {
            return false;
        };
        let Some(i) = c.forks.iter().position(|f| f.branch == branch_id) else {
            return false;
        };
        let status = response.status;
        match status {
            100..=199 => {
                let fork = &mut c.forks[i];
                fork.invite = None;
                if fork.state == ForkState::Calling {
                    fork.state = ForkState::Proceeding;
                    if fork.cancel_wanted {
                        self.cancel_fork(i, now);
                    }
                }
            }
            200..=299 => self.on_fork_answer(i, response, now),
            _ => self.on_fork_refusal(i, response, now),
        }
        true
    }

    fn on_fork_answer(&mut self, i: usize, response: &SipResponse, now: Instant) {
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let fork = &mut c.forks[i];
        if fork.state == ForkState::Answered {
            // A retransmitted 2xx: our ACK was lost (§13.2.2.4).
            if let Some(ack) = fork.ack.clone() {
                self.engine.send(ack);
            }
            return;
        }
        let wanted = fork.state != ForkState::Cancelling && !fork.cancel_wanted;
        fork.invite = None;
        fork.state = ForkState::Answered;
        if let Some(tag) = response.to_tag() {
            fork.dialog.remote = format!("{};tag={tag}", fork.dialog.remote);
        }
        if let Some(contact) = response.header("Contact").and_then(NameAddr::parse) {
            fork.dialog.remote_target = contact.uri;
        }
        let mut route: Vec<String> = response
            .header_values("Record-Route")
            .flat_map(split_list)
            .map(str::to_string)
            .collect();
        route.reverse();
        fork.dialog.route = route;
        let (dialog, cseq) = (fork.dialog.clone(), fork.cseq);
        let target = dialog.remote_target.clone();
        let ack_branch = branch();
        let line = RequestLine {
            method: "ACK",
            uri: &target,
            branch: &ack_branch,
            cseq,
            route: true,
        };
        let ack = self.request_on(&dialog, Leg::Callee, line, None);
        self.engine.send(ack.clone());
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let fork = &mut c.forks[i];
        fork.ack = Some(ack);
        let (seat, report) = (fork.seat.clone(), fork.report);
        let taken = wanted
            && self.ending.is_none()
            && c.agent.is_none()
            && matches!(c.phase, Phase::Queued | Phase::RingingSeat);
        let queue = match (&c.queued, taken) {
            (Some(q), true) if report => c.runtime.offer_answered(q.key, &seat).map(Some),
            (None, true) if c.phase == Phase::RingingSeat => Some(None),
            _ => None,
        };
        match queue {
            Some(queue) => self.promote_fork(i, response, queue, now),
            None => {
                info!(
                    call_id = self.a.call_id,
                    seat, "seat answered too late; hung up"
                );
                self.bye_fork(i, now);
            }
        }
    }

    /// BYE on a fork's dialog that is not the call's callee leg.
    fn bye_fork(&mut self, i: usize, now: Instant) {
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let fork = &mut c.forks[i];
        fork.dialog.local_cseq = fork.cseq + 1;
        let dialog = fork.dialog.clone();
        let target = dialog.remote_target.clone();
        let bye_branch = branch();
        let line = RequestLine {
            method: "BYE",
            uri: &target,
            branch: &bye_branch,
            cseq: dialog.local_cseq,
            route: true,
        };
        let out = self.request_on(&dialog, Leg::Callee, line, None);
        self.engine.send(out.clone());
        self.pending.push(ClientRequest {
            leg: Leg::Callee,
            branch: bye_branch,
            method: "BYE",
            retransmit: Retransmit::new(out, now, true),
        });
    }

    /// The answering seat becomes the call's callee leg: media attached and bridged, other
    /// forks cancelled, the recording started.
    fn promote_fork(
        &mut self,
        i: usize,
        response: &SipResponse,
        queue: Option<(String, Duration)>,
        now: Instant,
    ) {
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let fork = &c.forks[i];
        self.b = DialogSide {
            local_cseq: fork.cseq,
            ..fork.dialog.clone()
        };
        self.b_invite_cseq = fork.cseq;
        self.b_invite_uri = fork.uri.clone();
        self.b_invite_branch = fork.branch.clone();
        self.b_ack = fork.ack.clone();
        self.b_state = CalleeState::Established;
        let seat = fork.seat.clone();
        self.seat = Some(seat.clone());
        if let Some((_, waited)) = &queue {
            c.waited = Some(*waited);
        }
        c.queued = None;
        c.direct_seat = None;
        c.phase = Phase::Bridged;
        c.agent_answered = true;
        if queue.is_none() {
            // Rung directly (a menu's seat route, the seat on duty): no queue made the agent
            // Busy.
            c.runtime.direct_call_started(&seat);
        }
        c.agent = Some(ConnectedAgent {
            seat: seat.clone(),
            queue: queue.map(|(q, _)| q),
            since: now,
        });
        let b_media = c.b_media.take();
        if let (Some(media), Some(leg)) = (self.media.as_mut(), b_media)
            && let Err(error) = media.attach(Leg::Callee, leg)
        {
            warn!(call_id = self.a.call_id, %error, "agent leg media not attached");
        }
        self.stop_prompts();
        self.cancel_forks(Some(i), now);
        if !self.learn_callee_sdp(response) {
            self.media_failed = true;
            if let Some(c) = self.center_mut() {
                c.outcome = Some(CallOutcome::Failed);
                c.agent_answered = false;
            }
            self.center_hang_up("488 agent SDP unusable", now);
            return;
        }
        info!(
            call_id = self.a.call_id,
            seat, "agent answered; caller connected"
        );
        self.answered_at = Some(Utc::now());
        self.start_recording();
        self.replicate();
    }

    fn on_fork_refusal(&mut self, i: usize, response: &SipResponse, now: Instant) {
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let fork = &mut c.forks[i];
        let first = fork.ack.is_none();
        if first {
            if let Some(tag) = response.to_tag()
                && !fork.dialog.remote.contains(";tag=")
            {
                fork.dialog.remote = format!("{};tag={tag}", fork.dialog.remote);
            }
            let ack = self.fork_transaction_request(i, "ACK");
            let Some(c) = self.center.as_deref_mut() else {
                return;
            };
            c.forks[i].ack = ack;
        }
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let fork = &mut c.forks[i];
        if let Some(ack) = fork.ack.clone() {
            self.engine.send(ack);
        }
        if !first {
            return;
        }
        let cancelled = fork.state == ForkState::Cancelling || fork.cancel_wanted;
        fork.state = ForkState::Failed;
        fork.invite = None;
        let status = response.status;
        info!(
            call_id = self.a.call_id,
            seat = fork.seat,
            status,
            "seat did not take the call"
        );
        if fork.report
            && !cancelled
            && let Some(q) = &c.queued
        {
            let (key, seat) = (q.key, fork.seat.clone());
            c.runtime.offer_failed(key, &seat, offer_failure(status));
        }
        if c.phase == Phase::RingingSeat && !c.forks.iter().any(Fork::live) {
            self.seat_unanswered(now);
        }
    }

    // ---- a seat rung directly -------------------------------------------------------------

    fn ring_seat(&mut self, seat: &str, now: Instant) {
        let ring_until = now + self.engine.settings.ring_timeout;
        let Some(c) = self.center_mut() else {
            return;
        };
        let Some(extension) = c.plan.extensions.get(seat).cloned() else {
            warn!(seat, "route to a seat this center does not have");
            self.close_with(UNAVAILABLE, CallOutcome::Failed);
            return;
        };
        c.phase = Phase::RingingSeat;
        c.direct_seat = Some((seat.to_string(), ring_until));
        if let Some(media) = &self.media {
            media.play(Leg::Caller, Playback::tone(ToneSpec::ringback_etsi()));
        }
        if !self.start_fork(seat, &extension, false, now) {
            self.seat_unanswered(now);
        }
    }

    /// The seat rung directly did not answer: the caller may leave it a message.
    fn seat_unanswered(&mut self, now: Instant) {
        let Some(seat) = self
            .center_mut()
            .and_then(|c| c.direct_seat.take())
            .map(|(seat, _)| seat)
        else {
            return;
        };
        self.cancel_forks(None, now);
        self.stop_prompts();
        self.start_voicemail(Some(seat), None);
    }

    // ---- after the agent ------------------------------------------------------------------

    fn survey_spec(&self) -> Option<switchboard_crds::queue::Survey> {
        let c = self.center.as_deref()?;
        c.plan.queues.get(c.queue_name.as_ref()?)?.survey.clone()
    }

    /// The agent hung up: the agent's call ends (wrap-up). With a survey on the queue the
    /// caller stays to rate the call (`true`); otherwise the B2BUA hangs the caller up.
    pub(super) fn center_agent_hung_up(&mut self, now: Instant) -> bool {
        let Some(c) = self.center.as_deref_mut() else {
            return false;
        };
        c.agent_call_over(now);
        let Some(survey) = self.survey_spec() else {
            return false;
        };
        if self.ending.is_some()
            || !matches!(self.a_state, CallerState::Accepted | CallerState::Confirmed)
        {
            return false;
        }
        if let Some(c) = self.center_mut() {
            c.phase = Phase::Survey;
        }
        // The caller alone in a survey: no longer a call a standby takes over.
        self.replicate();
        info!(
            call_id = self.a.call_id,
            "agent hung up; caller rates the call"
        );
        self.play_script(&[survey.prompt], None, Then::SurveyKey);
        true
    }

    // ---- voicemail ------------------------------------------------------------------------

    fn start_voicemail(&mut self, mailbox: Option<String>, queue: Option<String>) {
        if self.engine.settings.voicemail_dir.is_none() {
            warn!(
                call_id = self.a.call_id,
                "voicemail is not configured on this node"
            );
            self.close_with(UNAVAILABLE, CallOutcome::Failed);
            return;
        }
        let Some(c) = self.center_mut() else {
            return;
        };
        c.phase = Phase::Voicemail;
        if queue.is_some() {
            c.queue_name.clone_from(&queue);
        }
        c.voicemail = Some(Voicemail {
            mailbox: mailbox.unwrap_or_else(|| GENERAL_MAILBOX.to_string()),
            queue,
            message: None,
            deadline: None,
        });
        let greeting = c.plan.voicemail.greeting.clone();
        debug!(call_id = self.a.call_id, "voicemail greeting");
        self.play_script(
            &[greeting],
            Some(Playback::tone(record_tone())),
            Then::RecordMessage,
        );
    }

    fn record_message(&mut self, now: Instant) {
        let Some(dir) = self.engine.settings.voicemail_dir.clone() else {
            return;
        };
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let max = Duration::from_secs(c.plan.voicemail.max_message_seconds.into());
        let Some(vm) = c.voicemail.as_mut() else {
            return;
        };
        let at = Utc::now();
        let created = Mailboxes::new(dir)
            .new_message(&vm.mailbox, at)
            .map_err(|e| e.to_string())
            .and_then(|(id, path)| {
                CallRecorder::create(&path, RecorderOptions::default())
                    .map(|r| (id, path, r))
                    .map_err(|e| e.to_string())
            });
        match (created, &self.media) {
            (Ok((id, path, recorder)), Some(media)) => {
                media.record(recorder);
                info!(
                    call_id = self.a.call_id,
                    mailbox = vm.mailbox,
                    id,
                    "recording a voicemail message"
                );
                vm.message = Some((id, path, at));
                vm.deadline = Some(now + max);
            }
            (Err(error), _) => {
                warn!(call_id = self.a.call_id, %error, "voicemail cannot be recorded");
                self.close_with(UNAVAILABLE, CallOutcome::Failed);
            }
            (Ok(_), None) => {}
        }
    }

    /// Writes the voicemail message's metadata once the recording is finished; returns the
    /// message file for the CDR.
    pub(super) fn center_save_voicemail(
        &mut self,
        recorded: Option<RecordingSummary>,
    ) -> Option<String> {
        let dir = self.engine.settings.voicemail_dir.clone()?;
        let c = self.center.as_deref()?;
        let vm = c.voicemail.as_ref()?;
        let (id, path, at) = vm.message.as_ref()?;
        let file = path.file_name()?.to_string_lossy().into_owned();
        let message = VoicemailMessage {
            id: id.clone(),
            mailbox: vm.mailbox.clone(),
            from: self.caller_ext.clone(),
            queue: vm.queue.clone(),
            call_id: self.a.call_id.clone(),
            received_at: *at,
            duration_seconds: recorded.map_or(0.0, |r| r.duration().as_secs_f64()),
            file: file.clone(),
        };
        if let Err(error) = Mailboxes::new(dir).save(&message) {
            warn!(call_id = self.a.call_id, %error, "voicemail metadata not written");
        }
        info!(
            call_id = self.a.call_id,
            mailbox = vm.mailbox,
            id,
            seconds = message.duration_seconds,
            "voicemail message saved"
        );
        Some(format!("{}/{file}", vm.mailbox))
    }

    // ---- feature codes --------------------------------------------------------------------

    fn feature_code(&mut self, request: Option<AgentRequest>) {
        let Some(runtime) = self.runtime() else {
            return;
        };
        let seat = runtime.seat_of(&self.caller_ext);
        let engine = Arc::clone(&self.engine);
        let prompt = match (&seat, request) {
            (Some(seat), Some(request)) => {
                match runtime.request(seat, request.clone(), |ext| {
                    engine.seat_contact(ext).is_some()
                }) {
                    Ok(_) => match request {
                        AgentRequest::Login => "agent/logged-in.wav",
                        AgentRequest::Logout => "agent/logged-out.wav",
                        AgentRequest::Ready => "agent/ready.wav",
                        AgentRequest::NotReady(_) => "agent/not-ready.wav",
                    },
                    Err(error) => {
                        info!(call_id = self.a.call_id, seat, %error, "feature code refused");
                        "agent/refused.wav"
                    }
                }
            }
            _ => "agent/refused.wav",
        };
        if let Some(c) = self.center_mut() {
            c.served = true;
        }
        self.close_with(prompt, CallOutcome::Answered);
    }

    // ---- events and timers ----------------------------------------------------------------

    pub(super) fn on_media_event(&mut self, event: MediaEvent, now: Instant) {
        match event {
            MediaEvent::Dtmf {
                leg: Leg::Caller,
                key,
            } => self.on_caller_key(key, now),
            MediaEvent::PlaybackEnded {
                leg: Leg::Caller,
                id,
                end: PlaybackEnd::Finished,
            } => {
                let current = self
                    .center
                    .as_deref()
                    .is_some_and(|c| c.playing == Some(id));
                if current {
                    if let Some(c) = self.center_mut() {
                        c.playing = None;
                    }
                    self.advance_script();
                }
            }
            _ => {}
        }
    }

    fn on_caller_key(&mut self, key: char, now: Instant) {
        if self.ending.is_some() {
            return;
        }
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        match c.phase {
            Phase::Ivr => {
                let plan = Arc::clone(&c.plan);
                let actions = c
                    .walk
                    .as_mut()
                    .map(|w| w.on_digit(&plan.ivr, key, Utc::now()))
                    .unwrap_or_default();
                self.apply_ivr(actions, now);
            }
            Phase::Survey if c.survey.is_none() => {
                let Some(score) = key.to_digit(10).filter(|d| (1..=5).contains(d)) else {
                    return;
                };
                c.survey = u8::try_from(score).ok();
                c.input_deadline = None;
                info!(call_id = self.a.call_id, score, "survey answered");
                match self.survey_spec().and_then(|s| s.thank_you_prompt) {
                    Some(thanks) => {
                        self.stop_prompts();
                        self.play_script(&[thanks], None, Then::HangUp);
                    }
                    None => self.center_hang_up("survey answered", now),
                }
            }
            Phase::Voicemail
                if key == '#' && c.voicemail.as_ref().is_some_and(|v| v.message.is_some()) =>
            {
                self.center_hang_up("voicemail message ended with #", now);
            }
            _ => {}
        }
    }

    pub(super) fn center_on_timer(&mut self, now: Instant) {
        if self.ending.is_some() {
            self.center_fork_timers(now);
            return;
        }
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        if std::mem::take(&mut c.skip_due) {
            if c.script.is_empty() {
                self.script_done(now);
            } else {
                self.advance_script();
            }
        }
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        if c.input_deadline.is_some_and(|t| now >= t) {
            c.input_deadline = None;
            match c.phase {
                Phase::Ivr => {
                    let plan = Arc::clone(&c.plan);
                    let actions = c
                        .walk
                        .as_mut()
                        .map(|w| w.on_timeout(&plan.ivr, Utc::now()))
                        .unwrap_or_default();
                    self.apply_ivr(actions, now);
                }
                Phase::Survey => self.center_hang_up("no survey answer", now),
                _ => {}
            }
        }
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        if c.voicemail
            .as_ref()
            .and_then(|v| v.deadline)
            .is_some_and(|t| now >= t)
        {
            self.center_hang_up("voicemail message reached its maximum length", now);
            return;
        }
        if c.direct_seat.as_ref().is_some_and(|(_, t)| now >= *t) {
            info!(call_id = self.a.call_id, "seat did not answer in time");
            self.seat_unanswered(now);
        }
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let announce = c.phase == Phase::Queued
            && c.playing.is_none()
            && c.script.is_empty()
            && c.queued
                .as_ref()
                .and_then(|q| q.next_announcement)
                .is_some_and(|t| now >= t);
        if announce {
            self.announce(now);
        }
        self.center_fork_timers(now);
    }

    /// Timer A retransmits a fork's INVITE; with no response at all by Timer B the seat is
    /// unreachable.
    fn center_fork_timers(&mut self, now: Instant) {
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        let mut unreachable = Vec::new();
        for (i, fork) in c.forks.iter_mut().enumerate() {
            if !fork.live() {
                continue;
            }
            if now >= fork.deadline {
                fork.invite = None;
                let calling = fork.state == ForkState::Calling;
                fork.state = ForkState::Failed;
                if calling && fork.report && !fork.cancel_wanted {
                    unreachable.push(i);
                }
                continue;
            }
            if let Some(out) = fork.invite.as_mut().and_then(|r| r.due(now)) {
                self.engine.send(out);
            }
        }
        for i in unreachable {
            let seat = c.forks[i].seat.clone();
            warn!(
                call_id = self.a.call_id,
                seat, "offered seat never responded (Timer B)"
            );
            if let Some(q) = &c.queued {
                c.runtime
                    .offer_failed(q.key, &seat, OfferFailure::Unreachable);
            }
        }
        if c.phase == Phase::RingingSeat && !c.forks.iter().any(Fork::live) && self.ending.is_none()
        {
            self.seat_unanswered(now);
        }
    }

    /// Every end of the call: the ACD learns the caller left the queue, the agent's call
    /// ended, ringing seats are cancelled; the IVR path is counted.
    pub(super) fn center_finish(&mut self, now: Instant) {
        let Some(c) = self.center.as_deref_mut() else {
            return;
        };
        c.take_walk_steps();
        c.walk = None;
        if let Some(q) = c.queued.take() {
            c.waited = Some(now.saturating_duration_since(q.since));
            c.runtime.abandon(q.key);
            for f in &mut c.forks {
                f.report = false;
            }
        }
        c.agent_call_over(now);
        c.phase = Phase::Done;
        c.input_deadline = None;
        c.direct_seat = None;
        if let Some(vm) = c.voicemail.as_mut() {
            vm.deadline = None;
        }
        // The ports of an agent leg that never got bridged go back now, not when the
        // lingering dialog state is dropped.
        c.b_media = None;
        self.cancel_forks(None, now);
    }

    // ---- takeover -------------------------------------------------------------------------

    /// Gives a call taken over from the previous active node its center side, where it
    /// stood there: queued again (in its original order, music on hold again) or talking to
    /// its agent (Busy again).
    pub(super) fn center_take_over(
        &mut self,
        runtime: Arc<CallCenterRuntime>,
        tx: mpsc::Sender<CallEvent>,
        place: CenterPlace,
        now: Instant,
    ) {
        let Some(events) = self.media.as_ref().map(MediaSession::events) else {
            return;
        };
        let mut center = CenterCall::new(Arc::clone(&runtime), tx, events, None);
        center.ivr_path = place.ivr_path;
        center.boost = place.boost;
        center.queue_name = place.queue.clone();
        match place.agent {
            Some((seat, since)) => {
                match &place.queue {
                    Some(queue) => runtime.resume_queue_call(&seat, queue, &self.caller_ext),
                    None => runtime.direct_call_started(&seat),
                }
                center.phase = Phase::Bridged;
                center.agent_answered = true;
                center.agent = Some(ConnectedAgent {
                    seat,
                    queue: place.queue,
                    since,
                });
                self.center = Some(Box::new(center));
            }
            None => {
                self.center = Some(Box::new(center));
                if let Some(queue) = place.queue {
                    self.enter_queue(&queue, place.since, now);
                }
            }
        }
    }
}

/// Where a center call taken over from the previous active node stood there.
pub(super) struct CenterPlace {
    /// The queue it waits in, or came through to its agent.
    pub queue: Option<String>,
    /// When the caller entered their first queue (the order they keep).
    pub since: Instant,
    pub boost: u32,
    /// The agent's seat and when they answered; `None` while the caller waits.
    pub agent: Option<(String, Instant)>,
    pub ivr_path: Vec<String>,
}
