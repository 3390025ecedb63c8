//! A bounded table of server transactions, sans-IO: the endpoint's own (rejections,
//! OPTIONS) and each call leg's (its in-dialog answers) are this one type. Keyed by
//! `txkey::ServerKey` (RFC 3261 section 17.2.3), so a retransmission reaches the
//! transaction that answered it and nothing else does. A full table forgets its oldest
//! transaction first. Timers run from a heap; what is to be sent waits in
//! `poll_transmit` with the flow it goes on. Tests: `txtable_*`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use super::transaction::{Output, ServerInvite, ServerNonInvite, Timers};
use super::transport::Flow;
use super::txkey::ServerKey;

/// One server transaction of either kind.
#[derive(Debug)]
pub enum ServerTx {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

impl ServerTx {
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            ServerTx::Invite(t) => t.poll_timeout(),
            ServerTx::NonInvite(t) => t.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            ServerTx::Invite(t) => t.handle_timeout(now),
            ServerTx::NonInvite(t) => t.handle_timeout(now),
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        match self {
            ServerTx::Invite(t) => t.poll_output(),
            ServerTx::NonInvite(t) => t.poll_output(),
        }
    }

    fn is_terminated(&self) -> bool {
        match self {
            ServerTx::Invite(t) => t.is_terminated(),
            ServerTx::NonInvite(t) => t.is_terminated(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    tx: ServerTx,
    flow: Flow,
}

/// Server transactions by key, at most `capacity` of them.
#[derive(Debug)]
pub struct TxTable {
    capacity: usize,
    entries: HashMap<ServerKey, Entry>,
    order: VecDeque<ServerKey>,
    timers: BinaryHeap<Reverse<(Instant, ServerKey)>>,
    out: VecDeque<(Flow, Vec<u8>)>,
}

impl TxTable {
    pub fn new(capacity: usize) -> TxTable {
        TxTable {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &ServerKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Answers a request through a new transaction (an INVITE one for an INVITE key):
    /// the response goes out, and the transaction absorbs the request's retransmissions
    /// (and, for a 300-699 to an INVITE, waits for the ACK). A full table forgets its
    /// oldest transaction.
    pub fn respond(
        &mut self,
        now: Instant,
        key: ServerKey,
        flow: Flow,
        timers: Timers,
        status: u16,
        bytes: Vec<u8>,
    ) {
        let reliable = flow.is_reliable();
        let tx = if key.method() == "INVITE" {
            let mut tx = ServerInvite::new(now, reliable, timers);
            let _ = tx.respond(now, status, bytes);
            ServerTx::Invite(tx)
        } else {
            let mut tx = ServerNonInvite::new(now, reliable, timers);
            let _ = tx.respond(now, status, bytes);
            ServerTx::NonInvite(tx)
        };
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity {
                match self.order.pop_front() {
                    Some(old) => {
                        self.entries.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(key.clone());
        }
        self.entries.insert(key.clone(), Entry { tx, flow });
        if self.order.len() > self.entries.len() * 2 + 64 {
            let e = &self.entries;
            self.order.retain(|k| e.contains_key(k));
        }
        self.drive(&key);
    }

    /// A request that may belong to a transaction here: a retransmission (the last
    /// response goes out again) or the ACK of a 300-699 to an INVITE (RFC 2543 ACKs
    /// included). False when no transaction matches.
    pub fn on_request(&mut self, now: Instant, key: &ServerKey, method: &str) -> bool {
        let key = match self.entries.contains_key(key) {
            true => key.clone(),
            false => match key
                .without_to_tag()
                .filter(|k| self.entries.contains_key(k))
            {
                Some(k) if method == "ACK" => k,
                _ => return false,
            },
        };
        let Some(entry) = self.entries.get_mut(&key) else {
            return false;
        };
        match (&mut entry.tx, method) {
            (ServerTx::Invite(tx), "ACK") => {
                tx.on_ack(now);
            }
            (ServerTx::Invite(tx), _) => tx.on_request(now),
            (ServerTx::NonInvite(tx), _) => tx.on_request(now),
        }
        self.drive(&key);
        true
    }

    /// The ACK of a 2xx to the INVITE transaction `key` (a transaction of its own, matched
    /// by the dialog): stops the 2xx retransmissions.
    pub fn ack_2xx(&mut self, now: Instant, key: &ServerKey) {
        if let Some(Entry {
            tx: ServerTx::Invite(tx),
            ..
        }) = self.entries.get_mut(key)
        {
            tx.on_ack(now);
            self.drive(key);
        }
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, key)) = self.timers.pop().expect("peeked");
            if let Some(entry) = self.entries.get_mut(&key) {
                if entry.tx.poll_timeout().is_some_and(|d| d <= now) {
                    entry.tx.handle_timeout(now);
                }
                self.drive(&key);
            }
        }
    }

    /// The next message to send and the flow it goes on.
    pub fn poll_transmit(&mut self) -> Option<(Flow, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The last response of each non-INVITE transaction, for re-sending once the owner
    /// is gone (the endpoint's linger table).
    pub fn last_responses(&self) -> impl Iterator<Item = (&ServerKey, &[u8], &Flow)> {
        self.entries.iter().filter_map(|(k, e)| match &e.tx {
            ServerTx::NonInvite(tx) => tx.last_response().map(|b| (k, b, &e.flow)),
            ServerTx::Invite(_) => None,
        })
    }

    /// Collects a transaction's output, re-arms its timer, forgets it once terminated.
    fn drive(&mut self, key: &ServerKey) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        while let Some(o) = entry.tx.poll_output() {
            if let Output::Send(bytes) = o {
                self.out.push_back((entry.flow.clone(), bytes));
            }
        }
        if entry.tx.is_terminated() {
            self.entries.remove(key);
        } else if let Some(at) = entry.tx.poll_timeout() {
            self.timers.push(Reverse((at, key.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;
    use crate::sip::message;
    use crate::sip::uri::Via;
    use std::time::Duration;

    fn key(method: &str, branch: &str, host: &str) -> ServerKey {
        let text = format!(
            "{method} sip:x@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP {host};branch={branch}\r\n\
             From: <sip:a@b>;tag=f\r\nTo: <sip:x@192.0.2.1>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        let m = message::parse(text.as_bytes()).unwrap();
        let via = Via::top(m.headers_named("Via")).unwrap();
        ServerKey::of(&m, &via)
    }

    fn flow() -> Flow {
        Flow::for_test(
            Transport::Udp,
            "127.0.0.1:5060".parse().unwrap(),
            "127.0.0.1:5070".parse().unwrap(),
        )
        .0
    }

    fn sent(t: &mut TxTable) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| t.poll_transmit().map(|(_, b)| b)).collect()
    }

    #[test]
    fn txtable_retransmissions_get_their_own_answer_only() {
        let t0 = Instant::now();
        let mut t = TxTable::new(8);
        let options = key("OPTIONS", "z9hG4bKshared", "a.example");
        t.respond(
            t0,
            options.clone(),
            flow(),
            Timers::default(),
            200,
            b"200".to_vec(),
        );
        assert_eq!(sent(&mut t), vec![b"200".to_vec()]);
        assert!(t.on_request(t0, &options, "OPTIONS"));
        assert_eq!(sent(&mut t), vec![b"200".to_vec()], "a retransmission");
        // same branch, other host or method: not this transaction
        let other_host = key("OPTIONS", "z9hG4bKshared", "b.example");
        let other_method = key("REGISTER", "z9hG4bKshared", "a.example");
        assert!(!t.on_request(t0, &other_host, "OPTIONS"));
        assert!(!t.on_request(t0, &other_method, "REGISTER"));
        t.respond(
            t0,
            other_method.clone(),
            flow(),
            Timers::default(),
            405,
            b"405".to_vec(),
        );
        assert!(t.on_request(t0, &options, "OPTIONS"));
        assert!(t.on_request(t0, &other_method, "REGISTER"));
        assert_eq!(
            sent(&mut t),
            vec![b"405".to_vec(), b"200".to_vec(), b"405".to_vec()]
        );
        // Timer J ends them
        t.handle_timeout(t0 + Duration::from_secs(33));
        assert!(t.is_empty());
        assert!(t.poll_timeout().is_none());
    }

    #[test]
    fn txtable_invite_final_waits_for_its_ack_and_is_bounded() {
        let t0 = Instant::now();
        let mut t = TxTable::new(4);
        let invite = key("INVITE", "z9hG4bKi", "a.example");
        t.respond(
            t0,
            invite.clone(),
            flow(),
            Timers::default(),
            486,
            b"486".to_vec(),
        );
        let _ = sent(&mut t);
        // Timer G re-sends until the ACK
        t.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(sent(&mut t), vec![b"486".to_vec()]);
        assert!(t.on_request(
            t0 + Duration::from_millis(600),
            &key("ACK", "z9hG4bKi", "a.example"),
            "ACK"
        ));
        t.handle_timeout(t0 + Duration::from_secs(2));
        assert!(sent(&mut t).is_empty(), "no retransmission after the ACK");
        // bounded: the oldest goes first
        for i in 0..10 {
            t.respond(
                t0,
                key("BYE", &format!("z9hG4bK{i}"), "a.example"),
                flow(),
                Timers::default(),
                200,
                vec![],
            );
        }
        assert_eq!(t.len(), 4);
        assert!(t.contains(&key("BYE", "z9hG4bK9", "a.example")));
        assert!(!t.contains(&invite));
        assert_eq!(t.last_responses().count(), 4);
    }
}
