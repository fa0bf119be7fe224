//! Network namespaces as test machines: a small network on which each test host has an address
//! of its own, for tests of several nodes (a cluster, a node that loses etcd).
//!
//! ```text
//!   root namespace                          namespace emb{K}h{i}
//!   ┌──────────────────────────────┐        ┌───────────────────────────┐
//!   │ emb{K}br  10.213.K.1/24      │        │ eth0  10.213.K.(10+i)/24  │
//!   │   └─ emb{K}v{i} ═════════════veth═════╡ lo up                     │
//!   │ Proxy on 10.213.K.1:port ─┐  │        │ default via 10.213.K.1    │
//!   │ 127.0.0.1:port (S3, etcd) ◄┘ │        └───────────────────────────┘
//!   └──────────────────────────────┘
//! ```
//!
//! [`Net::new`] makes a Linux bridge in the root namespace and joins one network namespace per
//! host to it with a veth pair. `K` is unique on this machine while the [`Net`] lives: the
//! bridge name `emb{K}br` is taken with `ip link add`, which fails when it exists, so tests in
//! parallel processes (cargo-nextest) each get their own subnet. Processes run on a host with
//! [`Net::command`]. The loopback services the test script starts (Garage, etcd) are not
//! reachable from a namespace; [`Net::proxy`] forwards a port of the bridge's address to one of
//! them, and [`Proxy::cut`] makes it unreachable for a while ("etcd briefly unreachable").
//!
//! Everything is done with iproute2's `ip` and needs root: call [`netns_available`] first, which
//! prints why a test skips. Dropping the [`Net`] removes its namespaces and its bridge (the veths
//! go with them); kill the processes started in them first. A firewall that drops forwarded
//! packets (a `FORWARD` policy of `DROP` with `br_netfilter` loaded, as Docker sets up) also
//! drops the packets between two hosts.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the fixture"
)]

use std::ffi::OsStr;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Subnets are 10.213.K.0/24 with K in 1..=NETS.
const NETS: usize = 250;
/// Host i has the address 10.213.K.(FIRST_HOST + i).
const FIRST_HOST: usize = 10;

/// Whether this test can make namespaces: the test script's privileged switch, root, and `ip`.
/// Prints why not when it returns false.
pub fn netns_available() -> bool {
    if std::env::var_os("EMBER_PRIVILEGED_TESTS").is_none() {
        eprintln!("skipped: network namespaces need EMBER_PRIVILEGED_TESTS=1 (and root)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: network namespaces need root");
        return false;
    }
    match Command::new("ip").arg("-V").stdout(Stdio::null()).status() {
        Ok(status) if status.success() => true,
        Ok(status) => {
            eprintln!("skipped: `ip -V` failed ({status}): is iproute2 installed?");
            false
        }
        Err(e) => {
            eprintln!("skipped: cannot run `ip` (iproute2): {e}");
            false
        }
    }
}

/// A bridge and `hosts` network namespaces joined to it; see the module doc.
#[derive(Debug)]
pub struct Net {
    /// The third byte of the subnet, and the number in every name.
    k: u8,
    /// How many hosts exist (or were begun: `Drop` cleans up a half-made one too).
    hosts: usize,
}

impl Net {
    /// Makes the bridge and `hosts` namespaces. Fails with the `ip` command line and its stderr.
    /// Blocking: it runs `ip` a few times per host (some milliseconds each).
    pub fn new(hosts: usize) -> io::Result<Net> {
        if hosts > 254 - FIRST_HOST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a Net has at most {} hosts, not {hosts}", 254 - FIRST_HOST),
            ));
        }
        let mut net = Net::take_bridge()?;
        let bridge = net.bridge_name();
        let cidr = format!("{}/24", net.bridge_ip());
        ip(&["addr", "add", &cidr, "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..hosts {
            net.hosts = i + 1;
            net.add_host(i)?;
        }
        Ok(net)
    }

    /// Creates the bridge `emb{K}br` for the first free K, starting from one derived from the
    /// pid and a counter so that parallel tests seldom try the same K. The bridge is the lock
    /// on K: whatever else carries K's names is left over from a test that died.
    fn take_bridge() -> io::Result<Net> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let start = std::process::id() as usize * 7 + NEXT.fetch_add(1, Ordering::Relaxed) * 37;
        for offset in 0..NETS {
            let k = u8::try_from((start + offset) % NETS + 1).expect("NETS is below 256");
            match ip(&["link", "add", &bridge_name(k), "type", "bridge"]) {
                Ok(()) => return Ok(Net { k, hosts: 0 }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "no free test network: the bridges emb1br to emb{NETS}br all exist \
             (left over? remove them with `ip link del NAME`)"
        )))
    }

    fn add_host(&self, i: usize) -> io::Result<()> {
        let ns = self.ns_name(i);
        let veth = self.veth_name(i);
        if Path::new("/run/netns").join(&ns).exists() {
            ip(&["netns", "del", &ns])?;
        }
        if Path::new("/sys/class/net").join(&veth).exists() {
            ip(&["link", "del", &veth])?;
        }
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &veth, "master", &self.bridge_name(), "up"])?;
        let cidr = format!("{}/24", self.host_ip(i));
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        let gateway = self.bridge_ip().to_string();
        ip(&["-n", &ns, "route", "add", "default", "via", &gateway])
    }

    /// The bridge's address in the root namespace: the hosts' gateway, where proxies listen.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.k, 1)
    }

    /// Host i's address (on its `eth0`).
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        self.check_host(i);
        Ipv4Addr::new(10, 213, self.k, (FIRST_HOST + i) as u8)
    }

    /// Host i's namespace, as `ip netns` names it.
    pub fn ns_name(&self, i: usize) -> String {
        self.check_host(i);
        format!("emb{}h{i}", self.k)
    }

    /// A command that runs `program` on host i; add its arguments with `.arg`. For tokio, use
    /// `tokio::process::Command::from(net.command(i, program))`.
    ///
    /// It is `nsenter --net=/run/netns/NS program`: only the network namespace changes.
    /// (`ip netns exec` would also give the program a mount namespace with /sys mounted
    /// anew, which hides the cgroup hierarchies under /sys/fs/cgroup that the node's sandbox
    /// needs.) nsenter enters the namespace then execs `program` in the same process: the
    /// child's pid is the program's, so killing the child kills the program.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.ns_name(i)))
            .arg(program);
        command
    }

    /// Forwards connections to `bridge_ip():port` (a free port) to `to`, a loopback service of
    /// the root namespace, so that the hosts reach it.
    pub async fn proxy(&self, to: SocketAddr) -> io::Result<Proxy> {
        Proxy::start(SocketAddr::from((self.bridge_ip(), 0)), to).await
    }

    fn bridge_name(&self) -> String {
        bridge_name(self.k)
    }

    fn veth_name(&self, i: usize) -> String {
        format!("emb{}v{i}", self.k)
    }

    fn check_host(&self, i: usize) {
        assert!(i < self.hosts, "host {i} of a Net of {} hosts", self.hosts);
    }
}

impl Drop for Net {
    /// Removes the hosts, then the bridge (which frees K for another Net). The veths are
    /// deleted by name too: a namespace in which a process still runs outlives its name, and
    /// its veth with it. Failures are printed, never raised.
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let veth = self.veth_name(i);
            if Path::new("/sys/class/net").join(&veth).exists() {
                warn_on_error(ip(&["link", "del", &veth]));
            }
            let ns = format!("emb{}h{i}", self.k);
            if Path::new("/run/netns").join(&ns).exists() {
                warn_on_error(ip(&["netns", "del", &ns]));
            }
        }
        warn_on_error(ip(&["link", "del", &self.bridge_name()]));
    }
}

fn bridge_name(k: u8) -> String {
    format!("emb{k}br")
}

fn warn_on_error(result: io::Result<()>) {
    if let Err(e) = result {
        eprintln!("warning: cleaning up a test network: {e}");
    }
}

/// Runs `ip ARGS`. Its failure is an error naming the command line and carrying its stderr,
/// of kind `AlreadyExists` when `ip` says "File exists".
fn ip(args: &[&str]) -> io::Result<()> {
    let line = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `{line}`: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kind = if stderr.contains("File exists") {
        io::ErrorKind::AlreadyExists
    } else {
        io::ErrorKind::Other
    };
    Err(io::Error::new(
        kind,
        format!("`{line}` failed ({}): {}", out.status, stderr.trim()),
    ))
}

/// A TCP forwarder from a port of the bridge's address to a loopback service; see
/// [`Net::proxy`]. Stops (closing its connections) when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Conns>>,
    accept: JoinHandle<()>,
}

/// The forwarded connections, and whether the proxy is cut. One lock for both, so that a
/// connection accepted while `cut()` runs is either refused or closed by it.
#[derive(Debug, Default)]
struct Conns {
    cut: bool,
    tasks: Vec<AbortHandle>,
}

impl Proxy {
    async fn start(listen: SocketAddr, to: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("proxy: cannot listen on {listen}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        let conns = Arc::new(Mutex::new(Conns::default()));
        let accept = tokio::spawn(accept_loop(listener, to, Arc::clone(&conns)));
        Ok(Proxy {
            addr,
            conns,
            accept,
        })
    }

    /// Where the hosts connect: the bridge's address and the proxy's port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every forwarded connection and refuses new ones (accepts and closes them at
    /// once) until [`Proxy::restore`].
    pub fn cut(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.cut = true;
        for task in conns.tasks.drain(..) {
            task.abort();
        }
    }

    /// Forwards new connections again after [`Proxy::cut`].
    pub fn restore(&self) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cut = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        for task in conns.tasks.drain(..) {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, to: SocketAddr, conns: Arc<Mutex<Conns>>) {
    loop {
        let inbound = match listener.accept().await {
            Ok((inbound, _)) => inbound,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted.
                eprintln!("proxy to {to}: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut conns = conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.cut {
            drop(inbound);
            continue;
        }
        conns.tasks.retain(|task| !task.is_finished());
        let task = tokio::spawn(forward(inbound, to));
        conns.tasks.push(task.abort_handle());
    }
}

/// Copies both ways between a host's connection and a new one to `to`, until either closes.
async fn forward(mut inbound: TcpStream, to: SocketAddr) {
    let mut outbound = match TcpStream::connect(to).await {
        Ok(outbound) => outbound,
        Err(e) => {
            eprintln!("proxy to {to}: connect: {e}");
            return;
        }
    };
    // An error here is a connection reset by either side: both are closed on return.
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
