//! `ember logs NAME`: what a function's instances printed, and the node's notes about them.

use std::time::Duration;

use super::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub name: String,
    /// How many of the last lines to show
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: usize,
    /// Keep printing new lines as they arrive (Ctrl-C stops)
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The lines of `tail` that come after `last`, the newest line already printed. Lines start
/// with a millisecond timestamp and the instance id, so a repeat is rare; if `last` has
/// scrolled out of the window, everything in it is new.
fn new_lines<'a>(tail: &'a str, last: Option<&str>) -> Vec<&'a str> {
    let lines: Vec<&str> = tail.lines().collect();
    let start = last
        .and_then(|l| lines.iter().rposition(|x| *x == l))
        .map_or(0, |i| i + 1);
    lines[start..].to_vec()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.client.client();
    let first = client.logs(&args.name, args.lines).await?;
    print!("{first}");
    if !args.follow {
        return Ok(());
    }
    let mut last = first.lines().last().map(str::to_string);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tail = client.logs(&args.name, 1000).await?;
        let fresh = new_lines(&tail, last.as_deref());
        for l in &fresh {
            println!("{l}");
        }
        if let Some(l) = fresh.last() {
            last = Some(l.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::new_lines;

    #[test]
    fn only_lines_after_the_last_seen_are_new() {
        assert_eq!(new_lines("a\nb\nc\n", Some("b")), ["c"]);
        assert_eq!(new_lines("a\nb\n", Some("b")), Vec::<&str>::new());
        assert_eq!(new_lines("x\ny\n", Some("gone")), ["x", "y"]);
        assert_eq!(new_lines("x\n", None), ["x"]);
    }
}
