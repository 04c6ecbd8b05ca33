//! Which tests run at the same time. The integration tests are one binary, so libtest runs any
//! of them side by side (`--test-threads`: `scripts/test` sets four, the default is one per
//! core). Most share the machine
//! well: each has its own queues, files and ports. A few would break the others, or measure
//! what the others' load would skew; those run alone:
//!
//! - `broker_restart`: stops the local RabbitMQ application, which every other test uses;
//! - `cluster`: boots three RabbitMQ nodes of its own and bounds failover and exit times;
//! - `rate_limits`: counts PHP's requests per second against the limit, within 5 %.
//!
//! Every test that uses the broker holds a shared turn while its [`super::TestCtx`] lives
//! (`TestCtx::new` takes one). A test that runs alone calls [`alone`] first: it waits until no
//! test holds a turn, and the tests that start meanwhile wait until it ends (tokio's `RwLock` is
//! fair: a waiting writer holds back new readers).
//!
//! A test holds one turn, whatever number of `TestCtx` it makes: the turn is kept for the thread
//! the test runs on (libtest runs each test on a thread of its own, and `#[tokio::test]` polls
//! the test's body on it), and a later `TestCtx` of the same test reuses it. A second shared turn
//! would wait behind a test waiting to run alone, which waits for the first: a deadlock.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static TURNS: RwLock<()> = RwLock::const_new(());

thread_local! {
    /// The turn of the test running on this thread, while it holds one.
    static HELD: RefCell<Weak<Turn>> = const { RefCell::new(Weak::new()) };
}

/// A test's permission to run, given back when its last holder is dropped. One of the two
/// guards is set; it is held only to be dropped.
pub struct Turn {
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _alone: Option<RwLockWriteGuard<'static, ()>>,
}

/// The turn this test holds, or a shared one: it runs beside the other shared ones.
pub async fn shared() -> Arc<Turn> {
    if let Some(turn) = held() {
        return turn;
    }
    hold(Turn {
        _shared: Some(TURNS.read().await),
        _alone: None,
    })
}

/// A turn to run alone: waits until every other test's turn is dropped, and holds back the
/// tests that start meanwhile until this one is dropped. Call it before anything else.
pub async fn alone() -> Arc<Turn> {
    assert!(
        held().is_none(),
        "a test that runs alone takes its turn before its TestCtx"
    );
    hold(Turn {
        _shared: None,
        _alone: Some(TURNS.write().await),
    })
}

fn held() -> Option<Arc<Turn>> {
    HELD.with(|h| h.borrow().upgrade())
}

fn hold(turn: Turn) -> Arc<Turn> {
    let turn = Arc::new(turn);
    HELD.with(|h| *h.borrow_mut() = Arc::downgrade(&turn));
    turn
}
