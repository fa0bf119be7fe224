//! How an invocation is told to clients: its phases as a `Server-Timing`-style header, and its
//! log in the shape Lambda's `LogType: Tail` returns.

use std::time::Duration;

use ember_node::{Invocation, StartPath, Timing};

/// `Server-Timing` syntax, milliseconds: `queue;dur=0.012, spawn;dur=1.1, ...`, phases that
/// did not happen left out.
pub fn server_timing(t: &Timing) -> String {
    t.phases()
        .iter()
        .filter_map(|(n, d)| d.map(|d| format!("{n};dur={:.3}", ms(d))))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An invocation's log as Lambda shows it: START, the instance's `lines`, END, REPORT (with
/// `Init Duration` when the invocation paid for a start, `Restore Duration` when the start
/// was from the function's snapshot).
pub fn lambda_log(inv: &Invocation, lines: &str) -> String {
    let id = &inv.request_id;
    let exec = inv.timing.exec.unwrap_or_default();
    let mut report = format!(
        "REPORT RequestId: {id}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB",
        ms(exec),
        exec.as_millis() + 1,
        inv.memory_mb
    );
    match inv.start {
        StartPath::Warm => {}
        // As Lambda SnapStart reports a start from a snapshot.
        StartPath::FunctionSnapshot => {
            let restore = inv.timing.init();
            report.push_str(&format!(
                "\tRestore Duration: {:.2} ms\tBilled Restore Duration: {} ms",
                ms(restore),
                restore.as_millis() + 1
            ));
        }
        _ => report.push_str(&format!("\tInit Duration: {:.2} ms", ms(inv.timing.init()))),
    }
    // The version that ran: a published version's number, else `$LATEST`.
    let version = ember_node::versions::split_qualified(&inv.function)
        .1
        .unwrap_or(ember_node::function::LATEST);
    format!("START RequestId: {id} Version: {version}\n{lines}END RequestId: {id}\n{report}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_node::InvokeOutcome;

    fn inv(start: StartPath) -> Invocation {
        Invocation {
            request_id: "r1".into(),
            function: "f".into(),
            version: 3,
            start,
            image: None,
            snapshot: None,
            instance: "f-1".into(),
            cold_only: false,
            memory_mb: 256,
            log_lines: None,
            timing: Timing {
                queue: Duration::from_micros(12),
                spawn: Some(Duration::from_micros(1100)),
                exec: Some(Duration::from_micros(2500)),
                total: Duration::from_millis(4),
                ..Timing::default()
            },
            outcome: InvokeOutcome::Ok(b"1".to_vec()),
        }
    }

    #[test]
    fn timing_names_only_the_phases_that_happened_in_order() {
        assert_eq!(
            server_timing(&inv(StartPath::ColdBoot).timing),
            "queue;dur=0.012, spawn;dur=1.100, exec;dur=2.500, total;dur=4.000"
        );
    }

    #[test]
    fn the_lambda_log_reports_init_only_for_a_start() {
        let cold = lambda_log(&inv(StartPath::ColdBoot), "hello\n");
        assert_eq!(
            cold,
            "START RequestId: r1 Version: $LATEST\nhello\nEND RequestId: r1\nREPORT RequestId: r1\t\
             Duration: 2.50 ms\tBilled Duration: 3 ms\tMemory Size: 256 MB\tInit Duration: 1.10 ms\n"
        );
        let warm = lambda_log(&inv(StartPath::Warm), "");
        assert!(!warm.contains("Init Duration"), "{warm}");
        let snap = lambda_log(&inv(StartPath::FunctionSnapshot), "");
        assert!(
            snap.contains("\tRestore Duration: 1.10 ms\tBilled Restore Duration: 2 ms\n"),
            "{snap}"
        );
        assert!(!snap.contains("Init Duration"), "{snap}");
    }
}
