//! Re-announcing what a node vouches for, so that reports and directives lost while the
//! fleet mesh forms, or while a site was cut off, still reach every site.
//!
//! Gossip reaches the peers subscribed when a message is published, and others only
//! through gossipsub's message cache, which lasts a few heartbeats. A report published
//! while no path led to another site never arrives there, and that site's health gate
//! counts without it. So a node publishes again, in *rounds*:
//!
//! - **its own reports**, the newest per release for the [`MAX_RELEASES`] releases it
//!   reported on last, each re-signed by the driver with a new sequence and otherwise
//!   unchanged (same outcome, same `sent_at`). The same bytes would be dropped by every
//!   node that saw them already, and so never pass through it to a node that did not;
//!   a newer sequence is an update everywhere ([`crate::fleet::FleetView::record`]):
//!   forwarded, and counted once per device by whoever had it before. Several go out
//!   oldest first, so the newest outcome keeps the highest sequence.
//! - **the directives it applied**, as signed (only the publisher can sign one): the
//!   newest per release, [`MAX_DIRECTIVES`] at most, none within [`EXPIRY_MARGIN`] of
//!   its expiry (a receiver whose clock runs ahead would take it for a forgery).
//!   Receivers that have one refuse it as a replay and do not forward it; those that
//!   missed it take and forward it, and re-announce it in their own rounds.
//!
//! Two kinds of round, never closer than [`MIN_GAP`] (a round due sooner waits, and
//! rounds due together are one):
//!
//! - **Scheduled**, at [`SCHEDULE`] (15 s, 2 min, 10 min) after this device's newest
//!   report or directive: the newest report and the directives applied in the last
//!   [`RECENT_FOR`]. Losses happen while links come and go; three re-sends make a
//!   release's report traffic four times what it was, and re-sending for ever (every
//!   few minutes, say) would make every device receive every device's report again
//!   each period: 5 000 devices every 10 minutes is 8 reports a second at each device,
//!   for as long as it runs.
//! - **For a new peer**, [`PEER_SETTLE`] after a peer not known as a member of this site
//!   subscribes to the reports topic (a new link between sites: what was lost before
//!   can now cross): every report held from the last [`RECENT_FOR`] and every
//!   directive held.
//!
//! **Goals:** a node re-sends only what it signed itself or applied after verifying it,
//! so nobody can make it amplify someone else's messages; at most [`MAX_RELEASES`]
//! reports and [`MAX_DIRECTIVES`] directives a round, rounds [`MIN_GAP`] apart, which
//! stays within the per-device report budget every receiver enforces.
//!
//! **Non-goals:** re-announcing after a restart (what is held lives in memory: a
//! restarted device re-announces from its next report on); catching a site up that was
//! cut off for longer than [`RECENT_FOR`] (that needs pulling a newcomer's missing
//! reports from it, anti-entropy: a request protocol and a view-sized answer).
//!
//! **Drain rule:** after [`Reannounce::handle_timeout`], drain
//! [`Reannounce::poll_output`] before the next input.

use std::collections::{BTreeMap, VecDeque};

use crate::directive::SignedDirective;
use crate::report::Report;
use crate::{Millis, ReleaseId};

/// Scheduled rounds, in milliseconds after this device's newest report or directive.
pub const SCHEDULE: [Millis; 3] = [15_000, 120_000, 600_000];
/// How long after a peer of another site subscribed its round comes: the peers found
/// by one discovery round (dialled together) share one round.
pub const PEER_SETTLE: Millis = 3_000;
/// The shortest time between two rounds. With [`MAX_RELEASES`] reports a round, that is
/// one report per 7.5 s at most, below the one per 5 s every receiver allows a device
/// (`otamesh_node::feedback::REPORT_REFILL_MS`), so a re-sent report is never refused
/// as a flood.
pub const MIN_GAP: Millis = 30_000;
/// Reports and directives re-announced are at most this old (since this node sent or
/// applied them); directives are re-announced to new peers until they near expiry.
pub const RECENT_FOR: Millis = 3_600_000;
/// Releases whose report a node re-announces: the ones it reported on last.
pub const MAX_RELEASES: usize = 4;
/// Directives a node re-announces at most: the newest per release, most recently
/// issued first.
pub const MAX_DIRECTIVES: usize = 8;
/// A directive this close to its expiry is no longer re-announced.
pub const EXPIRY_MARGIN: Millis = 3_600_000;

/// Something to publish again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// This device's report: sign it again with a new, higher sequence and publish it.
    Report(Report),
    /// A directive this node applied: publish it as it is.
    Directive(SignedDirective),
}

/// What a node re-announces and when. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Reannounce {
    /// This device's newest report per release, and when it was sent.
    reports: BTreeMap<ReleaseId, (Report, Millis)>,
    /// The newest directive applied per release, and when.
    directives: BTreeMap<ReleaseId, (SignedDirective, Millis)>,
    /// Scheduled rounds still to come.
    scheduled: VecDeque<Millis>,
    /// The round a new peer asked for.
    for_peer: Option<Millis>,
    last_round: Option<Millis>,
    out: VecDeque<Output>,
}

impl Reannounce {
    /// Nothing held, nothing due.
    pub fn new() -> Self {
        Self::default()
    }

    /// This device published `report` (a new outcome): held, and the scheduled rounds
    /// start again from `now`.
    pub fn handle_reported(&mut self, now: Millis, report: &Report) {
        if hold(&mut self.reports, report.release, report, now, MAX_RELEASES, |r| r.sequence, |r| r.sequence)
        {
            self.schedule(now);
        }
    }

    /// This node applied `directive` (verified, newer than any before for its release):
    /// held, and the scheduled rounds start again from `now`.
    pub fn handle_directive(&mut self, now: Millis, directive: &SignedDirective) {
        let (release, max) = (directive.directive.release, MAX_DIRECTIVES);
        let issued = |s: &SignedDirective| s.directive.issued_at;
        if hold(&mut self.directives, release, directive, now, max, |s| s.directive.sequence, issued) {
            self.schedule(now);
        }
    }

    /// A peer not known as a member of this site subscribed to the reports topic: a
    /// round soon, unless nothing is held.
    pub fn handle_peer_joined(&mut self, now: Millis) {
        if self.reports.is_empty() && self.directives.is_empty() {
            return;
        }
        self.for_peer.get_or_insert(now.saturating_add(PEER_SETTLE));
    }

    /// When the next round is due, if one is.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let wanted = self.scheduled.front().copied().into_iter().chain(self.for_peer).min()?;
        Some(self.last_round.map_or(wanted, |last| wanted.max(last.saturating_add(MIN_GAP))))
    }

    /// Runs the round that is due at `now`, if any: its messages come out of
    /// [`Reannounce::poll_output`]. Every round it passed is merged into it.
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.poll_timeout().is_none_or(|due| due > now) {
            return;
        }
        while self.scheduled.front().is_some_and(|t| *t <= now) {
            self.scheduled.pop_front();
        }
        let for_peer = self.for_peer.take_if(|t| *t <= now).is_some();
        self.last_round = Some(now);
        let recent = |at: &Millis| now.saturating_sub(*at) <= RECENT_FOR;
        let mut reports: Vec<&Report> =
            self.reports.values().filter(|(_, at)| recent(at)).map(|(r, _)| r).collect();
        reports.sort_by_key(|r| r.sequence);
        if !for_peer {
            // A scheduled round: the newest outcome only (older ones had their rounds).
            reports.drain(..reports.len().saturating_sub(1));
        }
        self.out.extend(reports.into_iter().map(|r| Output::Report(r.clone())));
        self.directives.retain(|_, (s, _)| s.directive.expires_at > now.saturating_add(EXPIRY_MARGIN));
        let directives = self.directives.values().filter(|(_, at)| for_peer || recent(at));
        self.out.extend(directives.map(|(s, _)| Output::Directive(s.clone())));
    }

    /// The next message to publish again.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn schedule(&mut self, now: Millis) {
        self.scheduled = SCHEDULE.iter().map(|d| now.saturating_add(*d)).collect();
    }
}

/// Holds `item` as `release`'s newest (unless one at least as new, by `sequence`, is
/// held) and keeps at most `max`, dropping the oldest by `age` first. True if held.
fn hold<T: Clone>(
    held: &mut BTreeMap<ReleaseId, (T, Millis)>,
    release: ReleaseId,
    item: &T,
    now: Millis,
    max: usize,
    sequence: impl Fn(&T) -> u64,
    age: impl Fn(&T) -> u64,
) -> bool {
    if held.get(&release).is_some_and(|(h, _)| sequence(h) >= sequence(item)) {
        return false;
    }
    held.insert(release, (item.clone(), now));
    while held.len() > max {
        let oldest = held.iter().min_by_key(|(_, (h, _))| age(h)).map(|(r, _)| *r);
        // Invariant: the map holds more than `max` entries, so it has an oldest.
        held.remove(&oldest.expect("non-empty"));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directive::{DEFAULT_LIFETIME, Directive, Order};
    use crate::report::Outcome;

    fn release(n: u8) -> ReleaseId {
        ReleaseId::from_bytes([n; 32])
    }

    fn report(n: u8, sequence: u64) -> Report {
        Report {
            device_key: [7; 32],
            site: "s1".into(),
            class: "gw".into(),
            release: release(n),
            outcome: Outcome::Committed,
            active: Some(release(n)),
            sequence,
            sent_at: sequence,
        }
    }

    fn directive(n: u8, sequence: u64, issued_at: Millis) -> SignedDirective {
        let d = Directive {
            release: release(n),
            order: Order::Halt,
            sequence,
            issued_at,
            expires_at: issued_at + DEFAULT_LIFETIME,
        };
        SignedDirective::sign(d, &crate::trust::tests::key(1))
    }

    /// Advances to each due round until `until`; returns the rounds' times and outputs.
    fn run(r: &mut Reannounce, until: Millis) -> Vec<(Millis, Vec<Output>)> {
        let mut rounds = Vec::new();
        while let Some(t) = r.poll_timeout().filter(|t| *t <= until) {
            r.handle_timeout(t);
            rounds.push((t, std::iter::from_fn(|| r.poll_output()).collect()));
        }
        rounds
    }

    #[test]
    fn a_report_is_re_sent_on_the_schedule_then_no_more() {
        let mut r = Reannounce::new();
        assert_eq!(r.poll_timeout(), None, "nothing held, nothing due");
        r.handle_reported(1_000, &report(1, 10));
        let rounds = run(&mut r, u64::MAX / 2);
        let times: Vec<Millis> = rounds.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, SCHEDULE.map(|d| 1_000 + d).to_vec());
        for (_, out) in &rounds {
            assert_eq!(out, &vec![Output::Report(report(1, 10))]);
        }
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn a_new_peer_brings_a_round_but_not_closer_than_the_gap() {
        let mut r = Reannounce::new();
        r.handle_peer_joined(0);
        assert_eq!(r.poll_timeout(), None, "nothing held: no round for a new peer");
        r.handle_reported(0, &report(1, 10));
        assert_eq!(run(&mut r, SCHEDULE[0]).len(), 1);
        // A peer joins right after the scheduled round: its round waits for the gap.
        r.handle_peer_joined(SCHEDULE[0] + 1);
        assert_eq!(r.poll_timeout(), Some(SCHEDULE[0] + MIN_GAP));
        // Another peer in the meantime shares that round.
        r.handle_peer_joined(SCHEDULE[0] + 2);
        assert_eq!(run(&mut r, SCHEDULE[0] + MIN_GAP).len(), 1);
        assert_eq!(run(&mut r, SCHEDULE[2]).len(), SCHEDULE.len() - 1, "the rest of the schedule ran");
        // After the schedule, a peer's round comes PEER_SETTLE after it joined ...
        let later = RECENT_FOR - PEER_SETTLE;
        r.handle_peer_joined(later);
        assert_eq!(r.poll_timeout(), Some(later + PEER_SETTLE));
        assert_eq!(run(&mut r, RECENT_FOR)[0].1, vec![Output::Report(report(1, 10))]);
        // ... but a report older than RECENT_FOR is not re-sent any more.
        r.handle_peer_joined(RECENT_FOR + 1);
        assert_eq!(run(&mut r, u64::MAX / 2)[0].1, vec![]);
    }

    #[test]
    fn rounds_never_come_closer_than_the_gap() {
        let mut r = Reannounce::new();
        let mut last: Option<Millis> = None;
        for i in 0..200u64 {
            let now = i * 1_000;
            if i % 7 == 0 {
                r.handle_reported(now, &report((i % 9) as u8, i + 1));
            }
            if i % 11 == 0 {
                r.handle_directive(now, &directive((i % 13) as u8, i + 1, now));
            }
            r.handle_peer_joined(now);
            for (t, out) in run(&mut r, now) {
                assert!(last.is_none_or(|l| t >= l + MIN_GAP), "round at {t} after one at {last:?}");
                let reports = out.iter().filter(|o| matches!(o, Output::Report(_))).count();
                assert!(reports <= MAX_RELEASES && out.len() - reports <= MAX_DIRECTIVES);
                last = Some(t);
            }
        }
    }

    fn sequences(out: &[Output]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Output::Report(r) => Some(r.sequence),
                Output::Directive(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_new_peer_gets_the_last_releases_oldest_first_a_schedule_only_the_newest() {
        let mut r = Reannounce::new();
        for n in 1..=6u8 {
            r.handle_reported(0, &report(n, 10 + u64::from(n)));
        }
        // An older report of a held release changes nothing; a newer one replaces it.
        r.handle_reported(0, &report(5, 1));
        r.handle_reported(0, &report(3, 20));
        let scheduled = run(&mut r, SCHEDULE[0]).remove(0).1;
        assert_eq!(sequences(&scheduled), vec![20], "a scheduled round: the newest outcome only");
        r.handle_peer_joined(SCHEDULE[0]);
        let for_peer = run(&mut r, SCHEDULE[0] + MIN_GAP).remove(0).1;
        assert_eq!(
            sequences(&for_peer),
            vec![14, 15, 16, 20],
            "releases 4, 5, 6 and 3's newest; 1 and 2 fell out"
        );
    }

    #[test]
    fn directives_newest_per_release_bounded_and_not_near_expiry() {
        let mut r = Reannounce::new();
        r.handle_directive(0, &directive(1, 2, 0));
        r.handle_directive(0, &directive(1, 1, 0));
        for n in 2..=(MAX_DIRECTIVES as u8 + 1) {
            r.handle_directive(0, &directive(n, 1, u64::from(n)));
        }
        r.handle_peer_joined(0);
        let out = run(&mut r, PEER_SETTLE).remove(0).1;
        assert_eq!(out.len(), MAX_DIRECTIVES, "the earliest issued fell out");
        assert!(!out.contains(&Output::Directive(directive(1, 2, 0))));
        assert!(out.contains(&Output::Directive(directive(2, 1, 2))));
        // Old directives still go to a new peer; close to expiry, none is re-sent.
        assert!(run(&mut r, SCHEDULE[2]).iter().all(|(_, out)| out.len() == MAX_DIRECTIVES));
        r.handle_peer_joined(2 * RECENT_FOR);
        assert_eq!(run(&mut r, 3 * RECENT_FOR)[0].1.len(), MAX_DIRECTIVES);
        r.handle_peer_joined(DEFAULT_LIFETIME - EXPIRY_MARGIN);
        assert_eq!(run(&mut r, u64::MAX / 2)[0].1, vec![]);
    }
}
