//! The pool driven in-process, as ractor's own factory tests drive theirs: a fake worker actor,
//! linked to a small supervisor actor that owns the [`Pool`] as the consumer does and notes what
//! it sees. Time is paused: a wait that nothing would end fails at once instead of hanging.
//!
//! What the tests look at is outside the pool: the fake actors alive (ractor's own status of
//! each one spawned), the messages they got and finished, the tags the pool reported.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::types::DeliveryTag;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort,
    SupervisionEvent, call,
};
use tokio::sync::{mpsc, oneshot};

use super::{Pool, Upkeep};

/// How the test ends a fake worker's message.
#[derive(Debug, Clone, Copy)]
enum Finish {
    /// The message is done: the worker reports idle.
    Done,
    /// The worker panics.
    Panic,
    /// The worker's handler returns an error.
    Fail,
}

/// What the fakes and the supervisor did, in the order they did it.
#[derive(Debug, PartialEq, Eq)]
enum Note {
    /// A fake began a message.
    Started(ActorId, Vec<DeliveryTag>),
    /// A fake finished a message (it was not interrupted).
    Finished(ActorId, Vec<DeliveryTag>),
    /// The pool took a fake's report that it is idle, and returned the tags it held.
    Idle(ActorId, Vec<DeliveryTag>),
    /// The pool saw a fake end (and, if its place was vacant, the supervisor filled it).
    Ended {
        worker: ActorId,
        /// Tags reported for a nack.
        held: Vec<DeliveryTag>,
        failed: bool,
        vacant: bool,
    },
}

/// Shared by the test, the supervisor and the fakes.
struct World {
    /// Every fake started, in order.
    spawned: Mutex<Vec<ActorCell>>,
    notes: mpsc::UnboundedSender<Note>,
}

impl World {
    fn note(&self, note: Note) {
        let _ = self.notes.send(note);
    }
}

/// The fake worker: begins a message, waits for the test to end it, reports idle.
struct Fake;

struct FakeArgs {
    supervisor: ActorRef<SupMsg>,
    world: Arc<World>,
}

enum FakeMsg {
    Work {
        tags: Vec<DeliveryTag>,
        finish: oneshot::Receiver<Finish>,
    },
}

impl Actor for Fake {
    type Msg = FakeMsg;
    type State = FakeArgs;
    type Arguments = FakeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<FakeMsg>,
        args: FakeArgs,
    ) -> Result<FakeArgs, ActorProcessingErr> {
        args.world.spawned.lock().unwrap().push(myself.get_cell());
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<FakeMsg>,
        msg: FakeMsg,
        state: &mut FakeArgs,
    ) -> Result<(), ActorProcessingErr> {
        let FakeMsg::Work { tags, finish } = msg;
        let me = myself.get_id();
        state.world.note(Note::Started(me, tags.clone()));
        match finish.await {
            Ok(Finish::Done) | Err(_) => {}
            Ok(Finish::Panic) => panic!("the fake worker panics"),
            Ok(Finish::Fail) => return Err("the fake worker fails".into()),
        }
        state.world.note(Note::Finished(me, tags));
        state.supervisor.cast(SupMsg::Idle(me))?;
        Ok(())
    }
}

/// The test supervisor: owns the pool, as the consumer does.
struct Supervisor;

struct SupState {
    pool: Pool<Fake>,
    upkeep: Upkeep,
    world: Arc<World>,
}

enum SupMsg {
    Resize(usize, RpcReplyPort<()>),
    /// Gives the next idle worker a message holding `tags` (as `dispatch` does).
    Assign(
        Vec<DeliveryTag>,
        oneshot::Receiver<Finish>,
        RpcReplyPort<Option<ActorId>>,
    ),
    /// A fake's report (the consumer's `WorkerIdle`).
    Idle(ActorId),
    /// Stop replacing workers, as the consumer does from a `Drain`.
    Drain(RpcReplyPort<()>),
    /// The pool's own view; answered after every supervision event sent before it.
    Census(RpcReplyPort<Census>),
}

#[derive(Debug, PartialEq, Eq)]
struct Census {
    len: usize,
    idle: usize,
    target: usize,
}

impl Actor for Supervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = Arc<World>;

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        world: Arc<World>,
    ) -> Result<SupState, ActorProcessingErr> {
        let (supervisor, shared) = (myself.clone(), world.clone());
        let build = Box::new(move || {
            let args = FakeArgs {
                supervisor: supervisor.clone(),
                world: shared.clone(),
            };
            (Fake, args)
        });
        Ok(SupState {
            pool: Pool::new(myself.get_cell(), build),
            upkeep: Upkeep::KeepSize,
            world,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupMsg>,
        msg: SupMsg,
        state: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::Resize(size, reply) => {
                state.pool.resize(size).await?;
                reply.send(())?;
            }
            SupMsg::Assign(tags, finish, reply) => {
                let id = state.pool.next_idle();
                if let Some(id) = id {
                    let work = FakeMsg::Work {
                        tags: tags.clone(),
                        finish,
                    };
                    state.pool.send(id, work, tags).map_err(|_| "send")?;
                }
                reply.send(id)?;
            }
            SupMsg::Idle(id) => {
                let held = state.pool.finished(id).expect("a worker of the pool");
                state.world.note(Note::Idle(id, held));
            }
            SupMsg::Drain(reply) => {
                state.upkeep = Upkeep::Drain;
                reply.send(())?;
            }
            SupMsg::Census(reply) => reply.send(Census {
                len: state.pool.len(),
                idle: state.pool.idle_count(),
                target: state.pool.target(),
            })?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SupMsg>,
        event: SupervisionEvent,
        state: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        let worker = event.actor_id();
        let Some(ended) = state.pool.ended(event, state.upkeep) else {
            return Ok(());
        };
        // As `on_worker_ended`: the place of a worker that ended is filled by a resize to the
        // target.
        if ended.vacant {
            let target = state.pool.target();
            state.pool.resize(target).await?;
        }
        state.world.note(Note::Ended {
            worker: worker.expect("an end names its actor"),
            held: ended.held,
            failed: ended.failure.is_some(),
            vacant: ended.vacant,
        });
        Ok(())
    }
}

/// A supervisor with an empty pool, and what the test reads.
struct Harness {
    supervisor: ActorRef<SupMsg>,
    world: Arc<World>,
    notes: mpsc::UnboundedReceiver<Note>,
}

/// Longest wait for a note; with time paused it passes at once when nothing is left to run.
const WAIT: Duration = Duration::from_secs(10);

impl Harness {
    async fn start() -> Self {
        let (tx, notes) = mpsc::unbounded_channel();
        let world = Arc::new(World {
            spawned: Mutex::default(),
            notes: tx,
        });
        let (supervisor, _) = Actor::spawn(None, Supervisor, world.clone())
            .await
            .expect("the test supervisor starts");
        Self {
            supervisor,
            world,
            notes,
        }
    }

    async fn resize(&self, size: usize) {
        call!(self.supervisor, SupMsg::Resize, size).expect("resize");
    }

    async fn drain(&self) {
        call!(self.supervisor, SupMsg::Drain).expect("drain");
    }

    /// Gives `tags` to an idle worker and waits until it began: the worker and the sender that
    /// ends the message.
    async fn assign(&mut self, tags: &[DeliveryTag]) -> (ActorId, oneshot::Sender<Finish>) {
        let (finish, rx) = oneshot::channel();
        let worker = call!(self.supervisor, SupMsg::Assign, tags.to_vec(), rx)
            .expect("assign")
            .expect("an idle worker");
        assert_eq!(self.note().await, Note::Started(worker, tags.to_vec()));
        (worker, finish)
    }

    /// Whether an idle worker would take a message (the census does not consume one).
    async fn assign_refused(&self) -> bool {
        let (_finish, rx) = oneshot::channel();
        call!(self.supervisor, SupMsg::Assign, vec![999], rx)
            .expect("assign")
            .is_none()
    }

    /// The pool's own counts, once every supervision event sent so far was handled.
    async fn census(&self) -> Census {
        call!(self.supervisor, SupMsg::Census).expect("census")
    }

    async fn note(&mut self) -> Note {
        tokio::time::timeout(WAIT, self.notes.recv())
            .await
            .expect("a note in time")
            .expect("the notes channel is open")
    }

    /// Lets every actor run until none can go on. Time is paused, so the clock moves (and
    /// this returns) only once no task is ready: this is no wait on the wall clock.
    async fn until_idle(&self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// Once every actor is idle, no note is left unread.
    async fn assert_quiet(&mut self) {
        self.until_idle().await;
        assert_eq!(self.notes.try_recv().ok(), None);
    }

    /// Fake actors that have not stopped, in the order they started.
    fn live_workers(&self) -> Vec<ActorId> {
        let spawned = self.world.spawned.lock().unwrap();
        let live = spawned
            .iter()
            .filter(|c| c.get_status() != ActorStatus::Stopped);
        live.map(ActorCell::get_id).collect()
    }

    fn live(&self) -> usize {
        self.live_workers().len()
    }

    fn spawned(&self) -> usize {
        self.world.spawned.lock().unwrap().len()
    }

    fn cell(&self, worker: ActorId) -> ActorCell {
        let spawned = self.world.spawned.lock().unwrap();
        let cell = spawned.iter().find(|c| c.get_id() == worker);
        cell.expect("a fake").clone()
    }

    fn is_live(&self, worker: ActorId) -> bool {
        self.cell(worker).get_status() != ActorStatus::Stopped
    }

    /// Ends `worker`'s message and expects its notes: finished, and idle with its tags.
    async fn finish(&mut self, worker: ActorId, finish: oneshot::Sender<Finish>, tags: &[u64]) {
        finish.send(Finish::Done).expect("the fake waits");
        assert_eq!(self.note().await, Note::Finished(worker, tags.to_vec()));
        assert_eq!(self.note().await, Note::Idle(worker, tags.to_vec()));
    }

    async fn ended(&mut self) -> (ActorId, Vec<DeliveryTag>, bool, bool) {
        match self.note().await {
            Note::Ended {
                worker,
                held,
                failed,
                vacant,
            } => (worker, held, failed, vacant),
            other => panic!("expected an end, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn grows_from_zero_to_n_and_each_worker_takes_one_message() {
    let mut h = Harness::start().await;
    assert_eq!((h.live(), h.census().await.len), (0, 0));

    h.resize(3).await;
    assert_eq!((h.live(), h.spawned()), (3, 3));
    let census = h.census().await;
    assert_eq!(
        census,
        Census {
            len: 3,
            idle: 3,
            target: 3
        }
    );

    let mut taken = Vec::new();
    for tag in 1..=3 {
        taken.push(h.assign(&[tag]).await);
    }
    let mut workers: Vec<ActorId> = taken.iter().map(|(w, _)| *w).collect();
    workers.sort_unstable();
    workers.dedup();
    assert_eq!(workers.len(), 3, "one message per worker");
    assert!(h.assign_refused().await, "no fourth idle worker");

    for ((worker, finish), tag) in taken.into_iter().zip(1..) {
        h.finish(worker, finish, &[tag]).await;
    }
    assert_eq!(h.census().await.idle, 3);
    assert_eq!(h.spawned(), 3);
    h.assert_quiet().await;
}

#[tokio::test(start_paused = true)]
async fn shrink_stops_idle_workers_at_once_and_busy_ones_after_their_message() {
    let mut h = Harness::start().await;
    h.resize(3).await;
    let (a, finish_a) = h.assign(&[1]).await;
    let (b, finish_b) = h.assign(&[2, 3]).await;

    h.resize(0).await;
    // The idle one stops at once, with nothing to nack, and is not replaced.
    let (idle, held, failed, vacant) = h.ended().await;
    assert!(idle != a && idle != b);
    assert_eq!((held, failed, vacant), (vec![], false, false));
    h.assert_quiet().await;
    // The busy ones still run their message.
    assert_eq!(h.live(), 2);
    assert!(h.is_live(a) && h.is_live(b));

    h.finish(a, finish_a, &[1]).await;
    assert_eq!(h.ended().await, (a, vec![], false, false));
    assert!(h.is_live(b), "b's message is not done yet");
    assert_eq!(h.live(), 1);

    h.finish(b, finish_b, &[2, 3]).await;
    assert_eq!(h.ended().await, (b, vec![], false, false));
    assert_eq!(h.live(), 0);
    assert_eq!(
        h.spawned(),
        3,
        "no worker that ended after a shrink is replaced"
    );
    assert_eq!(h.census().await.len, 0);
    h.assert_quiet().await;
}

#[tokio::test(start_paused = true)]
async fn shrink_keeps_busy_workers_when_idle_ones_are_enough() {
    let mut h = Harness::start().await;
    h.resize(4).await;
    let (a, finish_a) = h.assign(&[1]).await;
    let (b, finish_b) = h.assign(&[2]).await;

    // Two idle workers stop, one of the busy ones retires after its message.
    h.resize(1).await;
    for _ in 0..2 {
        let (worker, held, _, vacant) = h.ended().await;
        assert!(worker != a && worker != b);
        assert_eq!((held, vacant), (vec![], false));
    }
    h.assert_quiet().await;
    assert_eq!(h.live(), 2);

    // Whichever retires stops right after its message, and only then.
    let mut retired = Vec::new();
    for (worker, finish, tag) in [(a, finish_a, 1), (b, finish_b, 2)] {
        h.finish(worker, finish, &[tag]).await;
        h.until_idle().await;
        if !h.is_live(worker) {
            assert_eq!(h.ended().await, (worker, vec![], false, false));
            retired.push(worker);
        }
    }
    assert_eq!(retired.len(), 1);
    assert_eq!(h.live(), 1);
    assert_eq!(
        h.census().await,
        Census {
            len: 1,
            idle: 1,
            target: 1
        }
    );
    assert_eq!(h.spawned(), 4);
    h.assert_quiet().await;
}

#[tokio::test(start_paused = true)]
async fn growing_while_workers_retire_keeps_them_and_spawns_none() {
    let mut h = Harness::start().await;
    h.resize(3).await;
    let mut taken = Vec::new();
    for tag in 1..=3 {
        taken.push(h.assign(&[tag]).await);
    }
    // All busy: two retire after their message.
    h.resize(1).await;
    h.assert_quiet().await;
    // Back to three: the two retiring ones stay; nothing is spawned.
    h.resize(3).await;
    assert_eq!(h.spawned(), 3);

    for ((worker, finish), tag) in taken.into_iter().zip(1..) {
        h.finish(worker, finish, &[tag]).await;
    }
    h.assert_quiet().await;
    assert_eq!((h.live(), h.spawned()), (3, 3));
    assert_eq!(
        h.census().await,
        Census {
            len: 3,
            idle: 3,
            target: 3
        }
    );

    // One more than before: the one missing is spawned.
    h.resize(4).await;
    assert_eq!((h.live(), h.spawned()), (4, 4));
}

/// A worker that fails (`how`) while holding `tags`: its tags are reported once, and it is
/// replaced. Tags a worker settled itself (its idle report) are never reported again.
async fn failed_worker_is_replaced_and_its_tags_reported_once(how: Finish) {
    let mut h = Harness::start().await;
    h.resize(2).await;
    let (worker, finish) = h.assign(&[6]).await;
    h.finish(worker, finish, &[6]).await;
    let (other, finish_other) = h.assign(&[9]).await;
    let (again, finish) = h.assign(&[7, 8]).await;
    assert_eq!(again, worker, "the only idle worker");

    finish.send(how).expect("the fake waits");
    assert_eq!(h.ended().await, (worker, vec![7, 8], true, true));
    assert!(!h.is_live(worker));
    assert_eq!((h.live(), h.spawned()), (2, 3), "replaced by a new worker");
    assert_eq!(
        h.census().await,
        Census {
            len: 2,
            idle: 1,
            target: 2
        }
    );

    // The replacement takes work; the other worker's message was not disturbed.
    let (replacement, finish_new) = h.assign(&[10]).await;
    assert!(replacement != worker && replacement != other);
    h.finish(other, finish_other, &[9]).await;
    h.finish(replacement, finish_new, &[10]).await;
    // Ended while idle: nothing of what it settled is reported.
    h.cell(other).stop(None);
    assert_eq!(h.ended().await, (other, vec![], false, true));
    h.assert_quiet().await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_panics_is_replaced_and_its_tags_reported_once() {
    failed_worker_is_replaced_and_its_tags_reported_once(Finish::Panic).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_returns_an_error_is_replaced_and_its_tags_reported_once() {
    failed_worker_is_replaced_and_its_tags_reported_once(Finish::Fail).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_stopped_by_a_shrink_is_not_replaced_but_one_stopped_otherwise_is() {
    let mut h = Harness::start().await;
    h.resize(2).await;
    h.resize(1).await;
    let (_, held, failed, vacant) = h.ended().await;
    assert_eq!((held, failed, vacant), (vec![], false, false));
    h.assert_quiet().await;
    assert_eq!((h.live(), h.spawned()), (1, 2));

    // Stopped by someone else, not retiring: its place is filled.
    let survivor = h.live_workers()[0];
    h.cell(survivor).stop(None);
    assert_eq!(h.ended().await, (survivor, vec![], false, true));
    assert_eq!((h.live(), h.spawned()), (1, 3));
    h.assert_quiet().await;
}

#[tokio::test(start_paused = true)]
async fn a_retiring_worker_that_fails_has_its_tags_reported_and_is_not_replaced() {
    let mut h = Harness::start().await;
    h.resize(1).await;
    let (worker, finish) = h.assign(&[5]).await;
    h.resize(0).await;
    finish.send(Finish::Panic).expect("the fake waits");
    assert_eq!(h.ended().await, (worker, vec![5], true, false));
    assert_eq!((h.live(), h.spawned()), (0, 1));
    h.assert_quiet().await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_replaces_no_worker() {
    let mut h = Harness::start().await;
    h.resize(2).await;
    let (busy, finish) = h.assign(&[3]).await;
    h.drain().await;

    finish.send(Finish::Fail).expect("the fake waits");
    assert_eq!(h.ended().await, (busy, vec![3], true, false));
    let idle = h.live_workers()[0];
    h.cell(idle).stop(None);
    assert_eq!(h.ended().await, (idle, vec![], false, false));
    assert_eq!((h.live(), h.spawned()), (0, 2));
    assert_eq!(
        h.census().await,
        Census {
            len: 0,
            idle: 0,
            target: 2
        }
    );
    h.assert_quiet().await;
}
