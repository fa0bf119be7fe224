//! The ladder with fake rungs: order, fall-through, the gate, which rung is named.

use super::*;

/// What a fake rung does when tried.
#[derive(Clone, Copy)]
enum Does {
    Start,
    Skip,
    Fail,
    End,
}

struct Fake {
    path: StartPath,
    name: &'static str,
    new: bool,
    does: Does,
    /// Time an attempt takes (what a failed one adds to `fallback`).
    takes: Duration,
}

fn rung(name: &'static str, path: StartPath, new: bool, does: Does) -> Fake {
    Fake {
        path,
        name,
        new,
        does,
        takes: Duration::ZERO,
    }
}

#[derive(Default)]
struct Cx {
    tried: Vec<&'static str>,
    falls: Vec<(&'static str, String, StartPath)>,
    gate: Option<InvokeOutcome>,
    gate_asked: usize,
}

impl Climber for Cx {
    fn fell(&mut self, fall: &Fall, then: StartPath) {
        let msg = format!("{}: {}", fall.what, crate::error_chain(&fall.error));
        self.falls.push((fall.rung, msg, then));
    }
    fn gate(&mut self) -> Option<InvokeOutcome> {
        self.gate_asked += 1;
        self.gate.take()
    }
}

impl Rung<Cx, &'static str> for Fake {
    fn path(&self) -> StartPath {
        self.path
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn starts_new(&self) -> bool {
        self.new
    }
    fn attempt<'a>(&'a self, cx: &'a mut Cx) -> AttemptFuture<'a, &'static str> {
        Box::pin(async move {
            cx.tried.push(self.name);
            tokio::time::sleep(self.takes).await;
            match self.does {
                Does::Start => Attempt::Started(self.name),
                Does::Skip => Attempt::Skipped,
                Does::Fail => Attempt::Failed {
                    what: format!("{} thing", self.name),
                    error: RungError::PageServer("page 7 does not match its hash".into()),
                },
                Does::End => Attempt::Ended(InvokeOutcome::Crashed(format!("{} ended", self.name))),
            }
        })
    }
}

/// The node's order, each rung doing what it is told.
fn ladder(warm: Does, image: Does, cold: Does) -> [Fake; 3] {
    [
        rung("warm", StartPath::Warm, false, warm),
        rung("image", StartPath::Image, true, image),
        rung("cold boot", StartPath::ColdBoot, true, cold),
    ]
}

async fn run(rungs: &[Fake], cx: &mut Cx) -> Climbed<&'static str> {
    let dyns: Vec<&dyn Rung<Cx, &'static str>> = rungs.iter().map(|r| r as _).collect();
    climb(&dyns, cx).await
}

fn started(c: &Climbed<&'static str>) -> Option<(&'static str, StartPath)> {
    match c {
        Climbed::Started { inst, path, .. } => Some((inst, *path)),
        Climbed::Ended { .. } => None,
    }
}

#[tokio::test]
async fn the_first_rung_that_starts_serves_and_later_ones_are_not_tried() {
    let mut cx = Cx::default();
    let c = run(&ladder(Does::Start, Does::Start, Does::Start), &mut cx).await;
    assert_eq!(started(&c), Some(("warm", StartPath::Warm)));
    assert_eq!(cx.tried, ["warm"]);
    assert_eq!(cx.gate_asked, 0, "a warm start passes no gate");

    let mut cx = Cx::default();
    let c = run(&ladder(Does::Skip, Does::Start, Does::Start), &mut cx).await;
    assert_eq!(started(&c), Some(("image", StartPath::Image)));
    assert_eq!(cx.tried, ["warm", "image"]);
    assert!(cx.falls.is_empty(), "a skipped rung is no failure");
    assert!(matches!(c, Climbed::Started { fallback: None, .. }));
}

#[tokio::test]
async fn a_failed_rung_falls_through_timed_and_reported_with_the_rung_that_served() {
    let mut rungs = ladder(Does::Skip, Does::Fail, Does::Start);
    rungs[1].takes = Duration::from_millis(20);
    let mut cx = Cx::default();
    let c = run(&rungs, &mut cx).await;
    assert_eq!(started(&c), Some(("cold boot", StartPath::ColdBoot)));
    assert_eq!(cx.tried, ["warm", "image", "cold boot"]);
    assert_eq!(cx.falls.len(), 1);
    let (rung, msg, then) = &cx.falls[0];
    assert_eq!(*rung, "image");
    assert_eq!(*then, StartPath::ColdBoot);
    assert!(
        msg.contains("image thing") && msg.contains("page 7"),
        "{msg}"
    );
    match c {
        Climbed::Started {
            fallback: Some(f), ..
        } => assert!(f >= Duration::from_millis(20), "{f:?}"),
        _ => panic!("the fallback time is the failed attempt's"),
    }
}

#[tokio::test]
async fn every_snapshot_rung_failing_still_serves_the_invocation() {
    // Two snapshot rungs failing in a row: the cold boot serves, both falls are reported
    // against it, and the fallback is their sum.
    let mut rungs = [
        rung("warm", StartPath::Warm, false, Does::Skip),
        rung("function snapshot", StartPath::Image, true, Does::Fail),
        rung("image", StartPath::Image, true, Does::Fail),
        rung("cold boot", StartPath::ColdBoot, true, Does::Start),
    ];
    rungs[1].takes = Duration::from_millis(10);
    rungs[2].takes = Duration::from_millis(10);
    let mut cx = Cx::default();
    let c = run(&rungs, &mut cx).await;
    assert_eq!(started(&c), Some(("cold boot", StartPath::ColdBoot)));
    let names: Vec<_> = cx.falls.iter().map(|f| (f.0, f.2)).collect();
    assert_eq!(
        names,
        [
            ("function snapshot", StartPath::ColdBoot),
            ("image", StartPath::ColdBoot)
        ]
    );
    assert!(
        matches!(c, Climbed::Started { fallback: Some(f), .. } if f >= Duration::from_millis(20))
    );
    assert_eq!(
        cx.gate_asked, 1,
        "the gate is passed once, before the first new start"
    );
}

#[tokio::test]
async fn the_functions_own_failure_ends_the_climb_and_names_its_rung() {
    let mut cx = Cx::default();
    let c = run(&ladder(Does::Skip, Does::End, Does::Start), &mut cx).await;
    assert_eq!(
        cx.tried,
        ["warm", "image"],
        "no cold boot after the function's own failure"
    );
    match c {
        Climbed::Ended {
            outcome: InvokeOutcome::Crashed(m),
            path: StartPath::Image,
            gated: false,
            ..
        } => assert_eq!(m, "image ended"),
        _ => panic!("the image rung's outcome is the answer"),
    }
}

#[tokio::test]
async fn the_gate_stops_new_starts_but_not_a_warm_instance() {
    // The new-start rungs here begin with the image's: the answer is still named as the last
    // rung (a cold boot), since no start was tried.
    let held = InvokeOutcome::Crashed("crash loop".into());
    let mut cx = Cx {
        gate: Some(held.clone()),
        ..Cx::default()
    };
    let c = run(&ladder(Does::Skip, Does::Start, Does::Start), &mut cx).await;
    assert_eq!(cx.tried, ["warm"], "nothing new was started");
    assert!(matches!(
        c,
        Climbed::Ended {
            gated: true,
            outcome: InvokeOutcome::Crashed(_),
            path: StartPath::ColdBoot,
            ..
        }
    ));

    let mut cx = Cx {
        gate: Some(held),
        ..Cx::default()
    };
    let c = run(&ladder(Does::Start, Does::Start, Does::Start), &mut cx).await;
    assert_eq!(started(&c), Some(("warm", StartPath::Warm)));
    assert_eq!(cx.gate_asked, 0);
}

#[tokio::test]
async fn a_ladder_where_nothing_serves_answers_with_a_start_failure() {
    let mut cx = Cx::default();
    let c = run(&ladder(Does::Skip, Does::Fail, Does::Skip), &mut cx).await;
    match c {
        Climbed::Ended {
            outcome: InvokeOutcome::StartFailed(m),
            path: StartPath::ColdBoot,
            ..
        } => assert!(m.contains("image failed"), "{m}"),
        _ => panic!("a start failure, never a panic"),
    }
    assert_eq!(cx.falls.len(), 1);
}
