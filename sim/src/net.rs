//! The flow-level (fluid) network: max-min fair sharing by progressive filling.
//!
//! A transfer is a *flow* of some bytes along a path of at most three shared links (for
//! example the sender's uplink, the site LAN and the receiver's downlink), plus
//! optionally a *route* of any length registered once ([`Net::add_route`]: the named
//! links a site's WAN flows cross, as in a parking lot), with an optional per-flow
//! ceiling. Concurrent flows share each link max-min fairly, as
//! SimGrid's fluid model does: no packets, no slow start.
//!
//! Flows live in *groups*: a group is a set of flows that can share a link with each
//! other and with no flow outside it (the simulator knows these from the topology: the
//! flows of one site's LAN, and the WAN flows of one site or, when the origin's egress
//! is limited, of the whole fleet). A start or a stop re-solves only its group, and each
//! group has a single pending completion timer, so the event queue holds one entry per
//! group rather than one per flow.
//!
//! **Goals:** exact max-min rates for the flows a change touches; time in integer
//! microseconds; no order-dependent floating point (flows are visited in a fixed order).
//!
//! **Non-goals:** TCP dynamics, per-packet latency (the simulator adds a request
//! latency before a flow starts), links shared by flows of two groups (the caller splits
//! such a link between the groups with per-flow ceilings).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A link's index. Links are numbered by the caller.
pub type LinkId = u32;
/// A flow's index, reused after the flow ends.
pub type FlowId = u32;

/// Placeholder for "no link" in a path.
pub const NO_LINK: LinkId = u32::MAX;

/// The links a flow crosses, unused places [`NO_LINK`].
pub type Path = [LinkId; 3];

/// A route's index ([`Net::add_route`]).
pub type RouteId = u32;

/// Placeholder for "no route".
pub const NO_ROUTE: RouteId = u32::MAX;

/// Microseconds of virtual time.
pub type Micros = u64;

/// The network: links, flows, groups.
#[derive(Debug)]
pub struct Net {
    caps: Vec<f64>,
    /// Route `r` is `route_links[route_start[r]..route_start[r + 1]]`.
    route_links: Vec<LinkId>,
    route_start: Vec<u32>,
    /// Where each flow lives: its group and its place in the group's arrays.
    handles: Vec<Handle>,
    /// 0, 1, 2, ...: a group's flows by their place, for the solvers.
    iota: Vec<u32>,
    free: Vec<FlowId>,
    freed: Vec<FlowId>,
    groups: Vec<Group>,
    dirty: Vec<u32>,
    rearm: Vec<u32>,
    scratch: Scratch,
}

/// A flow's state, kept in its group's array: a re-solve reads one group's flows from
/// one place in memory rather than from all over a fleet-wide table (at a million
/// devices, those cache misses were most of the solver's time).
#[derive(Debug, Clone)]
struct Flow {
    path: Path,
    /// The capacity of `path[0]` (infinite for none), kept here so that the tree
    /// solver reads no fleet-wide table.
    cap0: f64,
    route: RouteId,
    cap: f64,
    metered: bool,
    total: f64,
    remaining: f64,
    rate: f64,
}

#[derive(Debug, Clone, Copy)]
struct Handle {
    group: u32,
    slot: u32,
    live: bool,
}

#[derive(Debug, Clone)]
struct Group {
    /// The group's flows, and each one's id, in the same order.
    flows: Vec<Flow>,
    ids: Vec<FlowId>,
    last: Micros,
    next_at: Micros,
    armed: Micros,
    rate_sum: f64,
    metered_sum: f64,
    dirty: bool,
}

impl Default for Group {
    fn default() -> Self {
        Self {
            flows: Vec::new(),
            ids: Vec::new(),
            last: 0,
            next_at: Micros::MAX,
            armed: Micros::MAX,
            rate_sum: 0.0,
            metered_sum: 0.0,
            dirty: false,
        }
    }
}

#[derive(Debug, Default)]
struct Scratch {
    stamp: Vec<u32>,
    local: Vec<u32>,
    now: u32,
    rem: Vec<f64>,
    n: Vec<u32>,
    ver: Vec<u32>,
    adj_start: Vec<u32>,
    adj: Vec<u32>,
    fill: Vec<u32>,
    fixed: Vec<bool>,
    eff: Vec<f64>,
    order: Vec<u32>,
    /// The tree solver's small hash table from inner link to its local index, and
    /// each flow's local inner link.
    table: Vec<(LinkId, u32)>,
    inner: Vec<u32>,
    links: Vec<LinkId>,
    parent: Vec<u32>,
    depth: Vec<u8>,
}

/// What a group's timer or [`Net::flush`] asks the driver to schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    /// The group.
    pub group: u32,
    /// When to call [`Net::complete`].
    pub at: Micros,
}

/// What [`Net::flush`] reports about one group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flushed {
    /// The group.
    pub group: u32,
    /// The change in the sum of its flows' rates.
    pub delta: f64,
    /// The change in the sum of its metered flows' rates (see [`Net::start`]).
    pub metered_delta: f64,
    /// A timer to schedule, if any.
    pub timer: Option<Timer>,
}

/// A flow that ended, and the bytes it moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ended {
    /// The flow (its id may be reused after the next [`Net::flush`]).
    pub flow: FlowId,
    /// Bytes moved.
    pub bytes: f64,
}

impl Net {
    /// A network of links with these capacities (bytes per second; `f64::INFINITY` for
    /// a link that never constrains) and `groups` flow groups.
    pub fn new(caps: Vec<f64>, groups: usize) -> Self {
        let n = caps.len();
        let scratch = Scratch {
            stamp: vec![0; n],
            local: vec![0; n],
            rem: Vec::new(),
            n: Vec::new(),
            ver: Vec::new(),
            ..Default::default()
        };
        Self {
            caps,
            route_links: Vec::new(),
            route_start: vec![0],
            handles: Vec::new(),
            iota: Vec::new(),
            free: Vec::new(),
            freed: Vec::new(),
            groups: vec![Group::default(); groups],
            dirty: Vec::new(),
            rearm: Vec::new(),
            scratch,
        }
    }

    /// Registers a route: links that flows started with it cross besides their path.
    pub fn add_route(&mut self, links: &[LinkId]) -> RouteId {
        self.route_links.extend_from_slice(links);
        self.route_start.push(self.route_links.len() as u32);
        (self.route_start.len() - 2) as RouteId
    }

    /// Starts a flow of `bytes` in `group` over `path`, never faster than `cap`. A
    /// `metered` flow's rate is also summed apart (the simulator meters WAN bytes with
    /// it). Rates are re-solved at the next [`Net::flush`].
    pub fn start(
        &mut self,
        now: Micros,
        group: u32,
        path: Path,
        cap: f64,
        bytes: f64,
        metered: bool,
    ) -> FlowId {
        self.start_routed(now, group, path, NO_ROUTE, cap, bytes, metered)
    }

    /// As [`Net::start`], over `path` and then `route` ([`NO_ROUTE`] for none). Flows
    /// over a route are solved by progressive filling.
    #[allow(clippy::too_many_arguments)]
    pub fn start_routed(
        &mut self,
        now: Micros,
        group: u32,
        path: Path,
        route: RouteId,
        cap: f64,
        bytes: f64,
        metered: bool,
    ) -> FlowId {
        self.advance(group, now);
        let g = &mut self.groups[group as usize];
        let handle = Handle { group, slot: g.flows.len() as u32, live: true };
        let cap0 = if path[0] == NO_LINK { f64::INFINITY } else { self.caps[path[0] as usize] };
        g.flows.push(Flow { path, cap0, route, cap, metered, total: bytes, remaining: bytes, rate: 0.0 });
        let id = match self.free.pop() {
            Some(id) => {
                self.handles[id as usize] = handle;
                id
            }
            None => {
                self.handles.push(handle);
                (self.handles.len() - 1) as FlowId
            }
        };
        g.ids.push(id);
        if self.iota.len() < g.flows.len() {
            self.iota.push(self.iota.len() as u32);
        }
        self.mark(group);
        id
    }

    /// Stops a live flow before it completes; returns the bytes it moved.
    pub fn stop(&mut self, now: Micros, flow: FlowId) -> f64 {
        let h = self.handles[flow as usize];
        self.advance(h.group, now);
        let f = &self.groups[h.group as usize].flows[h.slot as usize];
        let moved = (f.total - f.remaining).clamp(0.0, f.total);
        self.remove(flow);
        moved
    }

    /// Changes a link's capacity from `now` on; `group` is the group whose flows use
    /// it (re-solved at the next flush).
    pub fn set_cap(&mut self, now: Micros, link: LinkId, cap: f64, group: u32) {
        if self.caps[link as usize] == cap {
            return;
        }
        self.advance(group, now);
        self.caps[link as usize] = cap;
        for f in &mut self.groups[group as usize].flows {
            if f.path[0] == link {
                f.cap0 = cap;
            }
        }
        self.mark(group);
    }

    /// Changes a live flow's ceiling from `now` on (re-solved at the next flush).
    pub fn set_flow_cap(&mut self, now: Micros, flow: FlowId, cap: f64) {
        let h = self.handles[flow as usize];
        // A flow that ended in the batch the driver is still handling: its group is
        // re-solved anyway.
        if !h.live || self.groups[h.group as usize].flows[h.slot as usize].cap == cap {
            return;
        }
        self.advance(h.group, now);
        self.groups[h.group as usize].flows[h.slot as usize].cap = cap;
        self.mark(h.group);
    }

    /// Changes the links a live flow crosses from `now` on (re-solved at the next
    /// flush): a receiver's downlink joins the path when it receives a second flow.
    pub fn set_path(&mut self, now: Micros, flow: FlowId, path: Path) {
        let h = self.handles[flow as usize];
        if !h.live || self.groups[h.group as usize].flows[h.slot as usize].path == path {
            return;
        }
        self.advance(h.group, now);
        let cap0 = if path[0] == NO_LINK { f64::INFINITY } else { self.caps[path[0] as usize] };
        let f = &mut self.groups[h.group as usize].flows[h.slot as usize];
        f.path = path;
        f.cap0 = cap0;
        self.mark(h.group);
    }

    /// Whether `flow` is live.
    pub fn is_live(&self, flow: FlowId) -> bool {
        self.handles.get(flow as usize).is_some_and(|h| h.live)
    }

    /// Bytes a live flow has moved by `now` (at or after its group's last change).
    pub fn moved(&self, now: Micros, flow: FlowId) -> f64 {
        let h = self.handles[flow as usize];
        let g = &self.groups[h.group as usize];
        let (f, last) = (&g.flows[h.slot as usize], g.last);
        let dt = now.saturating_sub(last) as f64 / 1e6;
        (f.total - f.remaining + f.rate * dt).clamp(0.0, f.total)
    }

    /// The current rate of a live flow, bytes per second.
    pub fn rate(&self, flow: FlowId) -> f64 {
        let h = self.handles[flow as usize];
        self.groups[h.group as usize].flows[h.slot as usize].rate
    }

    /// The live flows of a group, in a stable order.
    pub fn group_flows(&self, group: u32) -> &[FlowId] {
        &self.groups[group as usize].ids
    }

    /// The sum of the rates of a group's flows as last solved.
    pub fn rate_sum(&self, group: u32) -> f64 {
        self.groups[group as usize].rate_sum
    }

    /// A group's timer fired: ends every flow that is complete at `now` and returns
    /// them. A timer that is no longer due (rates changed since) does nothing but make
    /// sure the group is armed for its real next completion.
    pub fn complete(&mut self, now: Micros, timer: Timer, out: &mut Vec<Ended>) {
        let g = &mut self.groups[timer.group as usize];
        if g.armed == timer.at {
            g.armed = Micros::MAX;
        }
        if g.next_at > now {
            if g.next_at < g.armed {
                self.rearm.push(timer.group);
            }
            return;
        }
        let start = out.len();
        let g = &mut self.groups[timer.group as usize];
        // Moves every flow forward to `now` (as `advance` does) and picks the due ones,
        // in one pass.
        let dt = if now > g.last { (now - g.last) as f64 / 1e6 } else { 0.0 };
        let moving = now > g.last;
        g.last = g.last.max(now);
        for (f, &id) in g.flows.iter_mut().zip(&g.ids) {
            if moving {
                f.remaining -= f.rate * dt;
            }
            // Finish times are rounded up to the microsecond, so a due flow has nothing
            // but float rounding left; one due within the next microsecond waits for
            // its own timer, so that no flow ends before its bytes could have moved.
            if f.remaining <= 1e-9 * f.total + 1e-6 {
                out.push(Ended { flow: id, bytes: f.total });
            }
        }
        for e in &out[start..] {
            self.remove(e.flow);
        }
        self.mark(timer.group);
    }

    /// Re-solves every group changed since the last flush. Returns, per group, the
    /// change in its rate sum and, when the driver must schedule one, a timer. A group
    /// keeps at most one timer armed at or before its next completion: a timer that
    /// turns out early is cheap to re-arm, while one per change would fill the queue
    /// with stale entries.
    pub fn flush(&mut self, now: Micros, out: &mut Vec<Flushed>) {
        let dirty = std::mem::take(&mut self.dirty);
        for &group in &dirty {
            self.groups[group as usize].dirty = false;
            self.advance(group, now);
            let before = self.groups[group as usize].rate_sum;
            let metered_before = self.groups[group as usize].metered_sum;
            if !self.solve_tree(group) && !self.solve_laminar(group) {
                self.solve(group);
            }
            let g = &mut self.groups[group as usize];
            // In one pass: the metered rates' sum, and the flow that finishes first
            // (the smallest remaining/rate).
            let mut metered_sum = 0.0;
            let mut soonest = f64::INFINITY;
            for f in &g.flows {
                if f.metered {
                    metered_sum += f.rate;
                }
                if f.rate > 0.0 && f.remaining < soonest * f.rate {
                    soonest = f.remaining.max(0.0) / f.rate;
                }
            }
            g.metered_sum = metered_sum;
            let at = if soonest.is_finite() {
                let left = soonest * 1e6;
                let whole = left as Micros;
                g.last + whole + Micros::from((whole as f64) < left)
            } else {
                Micros::MAX
            };
            g.next_at = at;
            let timer = (at < g.armed).then(|| {
                g.armed = at;
                Timer { group, at }
            });
            out.push(Flushed {
                group,
                delta: g.rate_sum - before,
                metered_delta: g.metered_sum - metered_before,
                timer,
            });
        }
        self.dirty = dirty;
        self.dirty.clear();
        let rearm = std::mem::take(&mut self.rearm);
        for &group in &rearm {
            let g = &mut self.groups[group as usize];
            if g.next_at < g.armed {
                g.armed = g.next_at;
                out.push(Flushed {
                    group,
                    delta: 0.0,
                    metered_delta: 0.0,
                    timer: Some(Timer { group, at: g.next_at }),
                });
            }
        }
        self.rearm = rearm;
        self.rearm.clear();
        self.free.append(&mut self.freed);
    }

    fn mark(&mut self, group: u32) {
        let g = &mut self.groups[group as usize];
        if !g.dirty {
            g.dirty = true;
            self.dirty.push(group);
        }
    }

    fn remove(&mut self, flow: FlowId) {
        let h = &mut self.handles[flow as usize];
        h.live = false;
        let (group, slot) = (h.group, h.slot as usize);
        let g = &mut self.groups[group as usize];
        g.flows.swap_remove(slot);
        g.ids.swap_remove(slot);
        if let Some(&moved) = g.ids.get(slot) {
            self.handles[moved as usize].slot = slot as u32;
        }
        // Not reusable before the next flush: the driver may still be handling the flows
        // that ended with this one.
        self.freed.push(flow);
        self.mark(group);
    }

    /// Moves every flow of `group` forward to `now` at its current rate.
    fn advance(&mut self, group: u32, now: Micros) {
        let g = &mut self.groups[group as usize];
        if now <= g.last {
            return;
        }
        let dt = (now - g.last) as f64 / 1e6;
        g.last = now;
        for f in &mut g.flows {
            f.remaining -= f.rate * dt;
        }
    }

    /// The most common case, in a few linear passes: every flow of the group crosses
    /// the same root link (the site LAN, the origin, or none) and one inner link (its
    /// sender's uplink, its site's WAN), and nothing else but its own ceiling. Inner
    /// links partition the flows, and max-min fairness is each inner link's level,
    /// then the root's. Returns false for any other shape, for
    /// [`Net::solve_laminar`].
    fn solve_tree(&mut self, group: u32) -> bool {
        let Self { caps, groups, scratch: s, .. } = self;
        let Group { flows, rate_sum: g_rate_sum, .. } = &mut groups[group as usize];
        let Some(first) = flows.first() else {
            *g_rate_sum = 0.0;
            return true;
        };
        let finite = |l: LinkId| l != NO_LINK && caps[l as usize].is_finite();
        let root = first.path[1];
        let count = flows.len();
        s.rem.clear();
        s.n.clear();
        s.eff.clear();
        s.eff.resize(count, 0.0);
        s.inner.clear();
        s.inner.resize(count, FIXED);
        // Inner links get local indexes in order of first appearance, through a hash
        // table of twice the group's size or more (all in cache, unlike a table over
        // every link of the fleet). The same pass checks the group's shape.
        let size = (count * 2).next_power_of_two();
        s.table.clear();
        s.table.resize(size, (NO_LINK, 0));
        for ((f, eff), inner) in flows.iter().zip(&mut s.eff).zip(&mut s.inner) {
            if f.path[1] != root || f.route != NO_ROUTE || finite(f.path[2]) {
                return false;
            }
            *eff = f.cap;
            let l = f.path[0];
            if l == NO_LINK || !f.cap0.is_finite() {
                continue;
            }
            let mut slot = (l.wrapping_mul(0x9E37_79B9) as usize) & (size - 1);
            let li = loop {
                match s.table[slot] {
                    (k, li) if k == l => break li,
                    (NO_LINK, _) => {
                        let li = s.rem.len() as u32;
                        s.table[slot] = (l, li);
                        s.rem.push(f.cap0);
                        s.n.push(0);
                        break li;
                    }
                    _ => slot = (slot + 1) & (size - 1),
                }
            };
            s.n[li as usize] += 1;
            *inner = li;
        }
        // Inner links first.
        let inner_sum = level(&mut s.eff, &mut s.inner, &mut s.rem, &mut s.n);
        // Then the root link, levelled the same way (one link over every flow) over the
        // inner results. A root with room for everything the inner links allow changes
        // nothing: every flow would be settled in the first pass. The margin keeps float
        // rounding in the sum (far below 1e-12 of it) from ever deciding that, so the
        // shortcut gives exactly the rates the loop gives.
        let roomy = finite(root) && inner_sum <= caps[root as usize] * (1.0 - 1e-12);
        *g_rate_sum = if finite(root) && !roomy {
            s.inner.clear();
            s.inner.resize(count, 0);
            s.rem.clear();
            s.rem.push(caps[root as usize]);
            s.n.clear();
            s.n.push(count as u32);
            level(&mut s.eff, &mut s.inner, &mut s.rem, &mut s.n)
        } else {
            inner_sum
        };
        for (f, &eff) in flows.iter_mut().zip(&s.eff) {
            f.rate = eff;
        }
        true
    }

    /// The next most common case, in linear passes: the links the group's flows
    /// cross are *laminar*, any two links' flow sets disjoint or nested (senders'
    /// uplinks inside their site's LAN, a site's WAN inside the origin's egress, a
    /// receiver's downlink that one flow uses, or that only its WAN flows use, inside
    /// its site's WAN). Max-min fairness on a laminar family is nested water-filling:
    /// each link, innermost first, levels the rates its inner links left. Returns false
    /// for any other shape (a receiver whose downlink carries a LAN and a WAN flow),
    /// which [`Net::solve`] handles.
    fn solve_laminar(&mut self, group: u32) -> bool {
        const UNSET: u32 = u32::MAX - 1;
        const TOP: u32 = u32::MAX;
        let Self { caps, groups, scratch: s, iota, .. } = self;
        let Group { flows, rate_sum: g_rate_sum, .. } = &mut groups[group as usize];
        let ids = &iota[..flows.len()];
        if ids.is_empty() {
            *g_rate_sum = 0.0;
            return true;
        }
        let finite = |l: LinkId| l != NO_LINK && caps[l as usize].is_finite();
        s.now = s.now.wrapping_add(1);
        if s.now == 0 {
            s.stamp.iter_mut().for_each(|x| *x = 0);
            s.now = 1;
        }
        s.links.clear();
        s.n.clear();
        for &id in ids {
            if flows[id as usize].route != NO_ROUTE {
                return false;
            }
            for &l in &flows[id as usize].path {
                if !finite(l) {
                    continue;
                }
                if s.stamp[l as usize] != s.now {
                    s.stamp[l as usize] = s.now;
                    s.local[l as usize] = s.links.len() as u32;
                    s.links.push(l);
                    s.n.push(0);
                }
                s.n[s.local[l as usize] as usize] += 1;
            }
        }
        // A link's parent is the next larger link on every flow that crosses it; one
        // parent per link is what makes the family laminar. Links of equal size on one
        // flow carry the same flows, so ordering them by index is consistent.
        let nl = s.links.len();
        s.parent.clear();
        s.parent.resize(nl, UNSET);
        for &id in ids {
            let mut chain = [0u32; 3];
            let mut len = 0;
            for &l in &flows[id as usize].path {
                if finite(l) {
                    chain[len] = s.local[l as usize];
                    len += 1;
                }
            }
            // Sort the (at most three) links by (size, index) with compare-swaps.
            let key = |li: u32| (u64::from(s.n[li as usize]) << 32) | u64::from(li);
            for (a, b) in [(0, 1), (1, 2), (0, 1)] {
                if b < len && key(chain[b]) < key(chain[a]) {
                    chain.swap(a, b);
                }
            }
            for j in 0..len {
                let up = if j + 1 < len { chain[j + 1] } else { TOP };
                let p = &mut s.parent[chain[j] as usize];
                if *p == UNSET {
                    *p = up;
                } else if *p != up {
                    return false;
                }
            }
        }
        // Link -> flows (CSR), flows by their index in the group.
        s.adj_start.clear();
        s.adj_start.push(0);
        for i in 0..nl {
            let next = s.adj_start[i] + s.n[i];
            s.adj_start.push(next);
        }
        s.adj.clear();
        s.adj.resize(s.adj_start[nl] as usize, 0);
        s.fill.clear();
        s.fill.extend_from_slice(&s.adj_start[..nl]);
        s.eff.clear();
        for (fi, &id) in ids.iter().enumerate() {
            let f = &flows[id as usize];
            s.eff.push(f.cap);
            for &l in &f.path {
                if finite(l) {
                    let li = s.local[l as usize] as usize;
                    s.adj[s.fill[li] as usize] = fi as u32;
                    s.fill[li] += 1;
                }
            }
        }
        // Innermost first: a link's depth is its number of ancestors and a child is one
        // deeper than its parent, so the deepest first visits children before parents.
        s.depth.clear();
        let mut deepest = 0;
        for li in 0..nl {
            let mut depth = 0u8;
            let mut p = s.parent[li];
            while p != TOP {
                depth += 1;
                p = s.parent[p as usize];
            }
            s.depth.push(depth);
            deepest = deepest.max(depth);
        }
        s.fixed.clear();
        s.fixed.resize(ids.len(), false);
        for depth in (0..=deepest).rev() {
            for li in 0..nl {
                if s.depth[li] != depth {
                    continue;
                }
                let members = &s.adj[s.adj_start[li] as usize..s.adj_start[li + 1] as usize];
                let cap = caps[s.links[li] as usize];
                // Most links are not full (a site LAN faster than its senders), or
                // carry one flow (a receiver's downlink): no levelling to do.
                let wanted: f64 = members.iter().map(|&fi| s.eff[fi as usize]).sum();
                if wanted <= cap {
                    continue;
                }
                // Water-filling: a flow below the level keeps its rate, which only
                // raises the level for the others; repeat until none is below.
                let mut rem = cap;
                let mut left = members.len() as f64;
                for &fi in members {
                    s.fixed[fi as usize] = false;
                }
                loop {
                    let level = rem / left;
                    let mut changed = false;
                    for &fi in members {
                        let fi = fi as usize;
                        if !s.fixed[fi] && s.eff[fi] <= level {
                            s.fixed[fi] = true;
                            rem = (rem - s.eff[fi]).max(0.0);
                            left -= 1.0;
                            changed = true;
                        }
                    }
                    if !changed || left == 0.0 {
                        break;
                    }
                }
                if left > 0.0 {
                    let level = rem / left;
                    for &fi in members {
                        if !s.fixed[fi as usize] {
                            s.eff[fi as usize] = level;
                        }
                    }
                }
            }
        }
        let mut rate_sum = 0.0;
        for (fi, &id) in ids.iter().enumerate() {
            flows[id as usize].rate = s.eff[fi];
            rate_sum += s.eff[fi];
        }
        *g_rate_sum = rate_sum;
        true
    }

    /// Progressive filling over one group: raise every unfixed flow's rate together;
    /// a flow stops at its own ceiling, or with every other flow of the first link to
    /// fill up. Links' fair shares only grow as flows are fixed, so a lazy heap works.
    fn solve(&mut self, group: u32) {
        let Self { caps, groups, scratch: s, route_links, route_start, iota, .. } = self;
        let route = |r: RouteId| -> &[LinkId] {
            if r == NO_ROUTE {
                &[]
            } else {
                &route_links[route_start[r as usize] as usize..route_start[r as usize + 1] as usize]
            }
        };
        let Group { flows, rate_sum: g_rate_sum, .. } = &mut groups[group as usize];
        let ids = &iota[..flows.len()];
        s.now = s.now.wrapping_add(1);
        if s.now == 0 {
            s.stamp.iter_mut().for_each(|x| *x = 0);
            s.now = 1;
        }
        s.links.clear();
        s.rem.clear();
        s.n.clear();
        s.ver.clear();
        for &id in ids {
            let f = &flows[id as usize];
            for &l in f.path.iter().chain(route(f.route)) {
                if l == NO_LINK || !caps[l as usize].is_finite() {
                    continue;
                }
                if s.stamp[l as usize] != s.now {
                    s.stamp[l as usize] = s.now;
                    s.local[l as usize] = s.links.len() as u32;
                    s.links.push(l);
                    s.rem.push(caps[l as usize]);
                    s.n.push(0);
                    s.ver.push(0);
                }
                s.n[s.local[l as usize] as usize] += 1;
            }
        }
        // Link -> flows adjacency (CSR), flows by local index.
        let nl = s.links.len();
        s.adj_start.clear();
        s.adj_start.push(0);
        for i in 0..nl {
            let next = s.adj_start[i] + s.n[i];
            s.adj_start.push(next);
        }
        s.adj.clear();
        s.adj.resize(s.adj_start[nl] as usize, 0);
        s.fill.clear();
        s.fill.extend_from_slice(&s.adj_start[..nl]);
        for (fi, &id) in ids.iter().enumerate() {
            let f = &flows[id as usize];
            for &l in f.path.iter().chain(route(f.route)) {
                if l == NO_LINK || !caps[l as usize].is_finite() {
                    continue;
                }
                let li = s.local[l as usize] as usize;
                s.adj[s.fill[li] as usize] = fi as u32;
                s.fill[li] += 1;
            }
        }
        s.fixed.clear();
        s.fixed.resize(ids.len(), false);
        s.order.clear();
        s.order.extend(0..ids.len() as u32);
        s.order.sort_by(|&a, &b| {
            flows[ids[a as usize] as usize]
                .cap
                .total_cmp(&flows[ids[b as usize] as usize].cap)
                .then(a.cmp(&b))
        });
        let mut heap: BinaryHeap<Share> =
            (0..nl).map(|i| Share { share: s.rem[i] / f64::from(s.n[i]), link: i as u32, ver: 0 }).collect();
        let mut next = 0usize;
        let mut rate_sum = 0.0;
        let fix =
            |fi: usize, rate: f64, flows: &mut Vec<Flow>, s: &mut Scratch, heap: &mut BinaryHeap<Share>| {
                s.fixed[fi] = true;
                let f = &mut flows[ids[fi] as usize];
                f.rate = rate;
                for &l in f.path.iter().chain(route(f.route)) {
                    if l == NO_LINK || !caps[l as usize].is_finite() {
                        continue;
                    }
                    let li = s.local[l as usize] as usize;
                    s.rem[li] = (s.rem[li] - rate).max(0.0);
                    s.n[li] -= 1;
                    s.ver[li] += 1;
                    if s.n[li] > 0 {
                        heap.push(Share {
                            share: s.rem[li] / f64::from(s.n[li]),
                            link: li as u32,
                            ver: s.ver[li],
                        });
                    }
                }
            };
        loop {
            while next < s.order.len() && s.fixed[s.order[next] as usize] {
                next += 1;
            }
            if next == s.order.len() {
                break;
            }
            while heap
                .peek()
                .is_some_and(|top| top.ver != s.ver[top.link as usize] || s.n[top.link as usize] == 0)
            {
                heap.pop();
            }
            let fi = s.order[next] as usize;
            let cap = flows[ids[fi] as usize].cap;
            match heap.peek().copied() {
                Some(top) if top.share < cap => {
                    heap.pop();
                    let li = top.link as usize;
                    for k in s.adj_start[li]..s.adj_start[li + 1] {
                        let other = s.adj[k as usize] as usize;
                        if !s.fixed[other] {
                            fix(other, top.share, flows, s, &mut heap);
                            rate_sum += top.share;
                        }
                    }
                }
                _ => {
                    fix(fi, cap, flows, s, &mut heap);
                    rate_sum += cap;
                }
            }
        }
        *g_rate_sum = rate_sum;
    }
}

/// A link's fair share in the solver's min-heap.
#[derive(Debug, Clone, Copy)]
struct Share {
    share: f64,
    link: u32,
    ver: u32,
}

impl PartialEq for Share {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the smallest share first.
        other.share.total_cmp(&self.share).then(other.link.cmp(&self.link)).then(other.ver.cmp(&self.ver))
    }
}

/// In [`level`]: a flow settled at its own ceiling.
const FIXED: u32 = u32::MAX;

/// Max-min levelling over links that partition the flows: flow `i` (ceiling `eff[i]`)
/// crosses link `link[i]`, which has `rem` capacity left for its `n` unsettled flows. A
/// flow whose ceiling is within its link's fair share keeps its ceiling (its `link`
/// becomes [`FIXED`], the link gives up that much); settling one only raises the share
/// for the others, so repeat until nothing changes. The unsettled flows of link `l` then
/// get `rem[l] / n[l]` each in `eff`. Returns the sum of `eff`, as levelled.
fn level(eff: &mut [f64], link: &mut [u32], rem: &mut [f64], n: &mut [u32]) -> f64 {
    loop {
        let mut changed = false;
        for (&eff, link) in eff.iter().zip(link.iter_mut()) {
            if *link == FIXED {
                continue;
            }
            let l = *link as usize;
            if eff * f64::from(n[l]) <= rem[l] {
                *link = FIXED;
                rem[l] = (rem[l] - eff).max(0.0);
                n[l] -= 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut sum = 0.0;
    for (eff, &link) in eff.iter_mut().zip(&*link) {
        if link != FIXED {
            *eff = rem[link as usize] / f64::from(n[link as usize]);
        }
        sum += *eff;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(net: &Net, ids: &[FlowId]) -> Vec<f64> {
        ids.iter().map(|&f| (net.rate(f) * 1e9).round() / 1e9).collect()
    }

    #[test]
    fn one_link_four_capped_flows_is_10_20_35_35() {
        let mut net = Net::new(vec![100.0], 1);
        let ids: Vec<_> = [10.0, 20.0, 50.0, 80.0]
            .iter()
            .map(|&c| net.start(0, 0, [0, NO_LINK, NO_LINK], c, 1e9, false))
            .collect();
        net.flush(0, &mut Vec::new());
        assert_eq!(rates(&net, &ids), vec![10.0, 20.0, 35.0, 35.0]);
        assert_eq!(net.rate_sum(0), 100.0);
    }

    #[test]
    fn two_links_in_series_take_the_tighter() {
        // Link 0 (cap 30) carries flows a and b; link 1 (cap 100) carries b and c.
        // a, b get 15 each on link 0; c gets the rest of link 1: 85.
        let mut net = Net::new(vec![30.0, 100.0], 1);
        let a = net.start(0, 0, [0, NO_LINK, NO_LINK], f64::INFINITY, 1e9, false);
        let b = net.start(0, 0, [0, 1, NO_LINK], f64::INFINITY, 1e9, false);
        let c = net.start(0, 0, [1, NO_LINK, NO_LINK], f64::INFINITY, 1e9, false);
        net.flush(0, &mut Vec::new());
        assert_eq!(rates(&net, &[a, b, c]), vec![15.0, 15.0, 85.0]);
    }

    #[test]
    fn a_parking_lot_gives_every_flow_half() {
        // Three links of 10 in a row; one flow crosses all three, one flow each crosses
        // one. Every link carries two flows: each gets 5 (the parking lot's closed
        // form, C/2). Not laminar, so progressive filling solves it.
        let mut net = Net::new(vec![10.0; 3], 1);
        let long = net.start(0, 0, [0, 1, 2], f64::INFINITY, 1e9, false);
        let short: Vec<_> =
            (0..3).map(|l| net.start(0, 0, [l, NO_LINK, NO_LINK], f64::INFINITY, 1e9, false)).collect();
        net.flush(0, &mut Vec::new());
        assert_eq!(rates(&net, &[long, short[0], short[1], short[2]]), vec![5.0; 4]);
    }

    #[test]
    fn unlimited_link_leaves_flows_at_their_ceiling() {
        let mut net = Net::new(vec![f64::INFINITY], 1);
        let a = net.start(0, 0, [0, NO_LINK, NO_LINK], 7.0, 70.0, false);
        let mut timers = Vec::new();
        net.flush(0, &mut timers);
        assert_eq!(net.rate(a), 7.0);
        assert_eq!(timers[0].timer.unwrap().at, 10_000_000);
    }

    #[test]
    fn completion_frees_capacity_for_the_rest() {
        // Two flows on a link of 10 B/s: 10 and 30 bytes. The small one ends at 2 s, the
        // big one has 20 left and then runs alone at 10 B/s: ends at 4 s.
        let mut net = Net::new(vec![10.0], 1);
        let small = net.start(0, 0, [0, NO_LINK, NO_LINK], f64::INFINITY, 10.0, false);
        let big = net.start(0, 0, [0, NO_LINK, NO_LINK], f64::INFINITY, 30.0, false);
        let mut timers = Vec::new();
        net.flush(0, &mut timers);
        let t = timers.pop().unwrap().timer.unwrap();
        assert_eq!(t.at, 2_000_000);
        let mut ended = Vec::new();
        net.complete(t.at, t, &mut ended);
        assert_eq!(ended, vec![Ended { flow: small, bytes: 10.0 }]);
        net.flush(t.at, &mut timers);
        let t2 = timers.pop().unwrap().timer.unwrap();
        assert_eq!(t2.at, 4_000_000);
        net.complete(t2.at, t2, &mut ended);
        assert_eq!(ended[1], Ended { flow: big, bytes: 30.0 });
    }

    #[test]
    fn fast_solvers_agree_with_progressive_filling() {
        // Random three-level trees (a root over middle links over leaf links, flows
        // capped or not, some over a leaf that only they use, some over the root
        // alone), and random paths over
        // the same links that are mostly not laminar: the fast solver must either
        // refuse or agree with progressive filling.
        let mut laminar_cases = 0;
        for case in 0..400u64 {
            let r = |n: u64| crate::rng::unit(case, n, crate::rng::Purpose::Churn, 0);
            let middle = 1 + (r(0) * 4.0) as u32;
            let leaves = 1 + (r(1) * 6.0) as u32;
            // Links: leaves, then middles, then the root.
            let mut caps: Vec<f64> =
                (0..leaves + middle).map(|i| 1.0 + r(2 + u64::from(i)) * 100.0).collect();
            caps.push(if case % 3 == 0 { f64::INFINITY } else { 1.0 + r(50) * 200.0 });
            let root = leaves + middle;
            let tree = case % 2 == 0;
            let flows: Vec<(Path, f64)> = (0..1 + (r(60) * 12.0) as u64)
                .map(|f| {
                    let leaf = (r(100 + f) * f64::from(leaves)) as u32;
                    // In a tree a leaf always sits under the same middle link.
                    let mid = if tree {
                        leaves + leaf % middle
                    } else {
                        leaves + (r(150 + f) * f64::from(middle)) as u32
                    };
                    let cap = if r(200 + f) < 0.3 { f64::INFINITY } else { 1.0 + r(300 + f) * 60.0 };
                    let path = match (r(400 + f) * 4.0) as u32 {
                        0 => [leaf, mid, root],
                        1 => [mid, root, NO_LINK],
                        // The order of a path does not matter.
                        2 => [root, leaf, mid],
                        _ => [root, NO_LINK, NO_LINK],
                    };
                    (path, cap)
                })
                .collect();
            let solve = |laminar: bool| {
                let mut net = Net::new(caps.clone(), 1);
                let ids: Vec<_> = flows.iter().map(|&(p, c)| net.start(0, 0, p, c, 1e9, false)).collect();
                let took = laminar && (net.solve_tree(0) || net.solve_laminar(0));
                if !laminar {
                    net.solve(0);
                }
                (took, ids.iter().map(|&f| net.rate(f)).collect::<Vec<_>>())
            };
            let ((took, a), (_, b)) = (solve(true), solve(false));
            if tree {
                assert!(took, "case {case}: a tree is laminar: {flows:?}");
            }
            if !took {
                continue;
            }
            laminar_cases += 1;
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    x == y || (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                    "case {case}: laminar {a:?} vs filling {b:?}"
                );
            }
        }
        assert!(laminar_cases >= 200, "the trees and some random paths: {laminar_cases}");
    }

    #[test]
    fn a_downlink_shared_across_two_links_is_not_laminar() {
        // A receiver's downlink (link 0, 10) carries a WAN flow (over link 1, 100) and a
        // LAN flow (over link 2, 100); another flow crosses each of links 1 and 2. The
        // downlink's flows are in neither link's set, so progressive filling decides:
        // the receiver's two flows get 5 each, the others the rest of their link.
        let mut net = Net::new(vec![10.0, 100.0, 100.0], 1);
        let wan = net.start(0, 0, [1, 0, NO_LINK], f64::INFINITY, 1e9, true);
        let lan = net.start(0, 0, [2, 0, NO_LINK], f64::INFINITY, 1e9, false);
        let other_wan = net.start(0, 0, [1, NO_LINK, NO_LINK], f64::INFINITY, 1e9, true);
        let other_lan = net.start(0, 0, [2, NO_LINK, NO_LINK], f64::INFINITY, 1e9, false);
        assert!(!net.solve_laminar(0));
        let mut out = Vec::new();
        net.flush(0, &mut out);
        assert_eq!(rates(&net, &[wan, lan, other_wan, other_lan]), vec![5.0, 5.0, 95.0, 95.0]);
        assert_eq!((out[0].delta, out[0].metered_delta), (200.0, 100.0));
    }

    #[test]
    fn early_timer_rearms_for_the_real_completion() {
        // A 10 B/s link, one flow of 10 bytes: timer at 1 s. A second flow joins at
        // 0.5 s and halves the rate: the first timer is early, and firing it arms the
        // real completion (5 bytes left at 5 B/s: 1.5 s).
        let mut net = Net::new(vec![10.0], 1);
        let mut out = Vec::new();
        let a = net.start(0, 0, [0, NO_LINK, NO_LINK], f64::INFINITY, 10.0, false);
        net.flush(0, &mut out);
        let first = out.pop().unwrap().timer.unwrap();
        assert_eq!(first.at, 1_000_000);
        net.start(500_000, 0, [0, NO_LINK, NO_LINK], f64::INFINITY, 100.0, false);
        net.flush(500_000, &mut out);
        assert_eq!(out.pop().unwrap().timer, None, "a later completion needs no new timer");
        let mut ended = Vec::new();
        net.complete(first.at, first, &mut ended);
        assert!(ended.is_empty());
        net.flush(first.at, &mut out);
        let real = out.pop().unwrap().timer.unwrap();
        assert_eq!(real.at, 1_500_000);
        net.complete(real.at, real, &mut ended);
        assert_eq!(ended, vec![Ended { flow: a, bytes: 10.0 }]);
    }

    #[test]
    fn stopped_flow_reports_partial_bytes() {
        let mut net = Net::new(vec![10.0], 1);
        let f = net.start(0, 0, [0, NO_LINK, NO_LINK], f64::INFINITY, 100.0, false);
        net.flush(0, &mut Vec::new());
        assert_eq!(net.stop(3_000_000, f), 30.0);
        assert!(!net.is_live(f));
    }
}
