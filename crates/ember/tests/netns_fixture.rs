//! The network namespace fixture itself: hosts reach each other, a proxy takes them to a
//! loopback service of the root namespace and can be cut, and nothing is left behind.
//! Privileged: skips with a reason unless EMBER_PRIVILEGED_TESTS=1 and root.

#[path = "common/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::Duration;

use netns::{Net, netns_available};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const PYTHON: &str = "/usr/bin/python3";

/// Connects from host `i` to `addr` and returns the first line the server sends (empty when
/// the connection is closed first), or the client's error.
async fn fetch_from(net: &Net, i: usize, addr: SocketAddr) -> Result<String, String> {
    let script = "import socket, sys\n\
                  s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n\
                  sys.stdout.write(s.makefile().readline())\n";
    let mut command = Command::from(net.command(i, PYTHON));
    command
        .args(["-c", script])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    let out = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .map_err(|_| format!("no answer from {addr} within 10 s"))?
        .map_err(|e| format!("cannot run python in {}: {e}", net.ns_name(i)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A server in the root namespace, on loopback, that greets every connection, then keeps it
/// open until the client closes it (so that only the proxy can close it first).
async fn loopback_greeter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                stream.write_all(b"hello from root\n").await.unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

/// The inode of a network namespace, from a process's /proc/PID/ns/net or a /run/netns name.
fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_reach_each_other_and_loopback_through_a_proxy() {
    if !netns_available() {
        return;
    }
    let net = Net::new(2).unwrap();
    // A second Net at the same time (as in tests running in parallel): another subnet.
    let other = Net::new(1).unwrap();
    assert_ne!(net.bridge_ip(), other.bridge_ip());
    assert_ne!(net.ns_name(0), other.ns_name(0));
    let names = [net.ns_name(0), net.ns_name(1), other.ns_name(0)];

    // Host 1 serves, host 0 connects to host 1's address.
    let server = "import socket, sys\n\
                  s = socket.socket()\n\
                  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind((sys.argv[1], 7000))\n\
                  s.listen()\n\
                  print('ready', flush=True)\n\
                  c, _ = s.accept()\n\
                  c.sendall(b'hello from host 1\\n')\n\
                  c.close()\n\
                  sys.stdin.read()\n";
    let mut server = Command::from(net.command(1, PYTHON))
        .args(["-c", server])
        .arg(net.host_ip(1).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .await
        .unwrap();
    assert_eq!(ready, "ready\n");
    // nsenter execs: the child is python itself, in host 1's namespace.
    let pid = server.id().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert!(comm.starts_with("python3"), "pid {pid} is {comm:?}");
    assert_eq!(
        netns_inode(&format!("/proc/{pid}/ns/net")),
        netns_inode(&format!("/run/netns/{}", net.ns_name(1))),
    );
    assert_ne!(
        netns_inode(&format!("/proc/{pid}/ns/net")),
        netns_inode("/proc/self/ns/net"),
    );
    let to_host_1 = SocketAddr::from((net.host_ip(1), 7000));
    assert_eq!(
        fetch_from(&net, 0, to_host_1).await,
        Ok("hello from host 1\n".to_string())
    );
    // Killing the child kills the program (the server is still running, waiting on stdin).
    server.kill().await.unwrap();
    assert!(!server.wait().await.unwrap().success());

    // A loopback service of the root namespace is out of a host's reach, but not its proxy.
    let greeter = loopback_greeter().await;
    let proxy = net.proxy(greeter).await.unwrap();
    assert_eq!(proxy.addr().ip(), net.bridge_ip());
    assert!(fetch_from(&net, 0, greeter).await.is_err());
    assert_eq!(
        fetch_from(&net, 0, proxy.addr()).await,
        Ok("hello from root\n".to_string())
    );
    assert_eq!(
        fetch_from(&other, 0, proxy.addr()).await,
        Ok("hello from root\n".to_string()),
        "the proxy listens on the bridge's address: every host of the machine reaches it"
    );

    // A connection open through the proxy is closed by cut(); new ones get nothing.
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut line = [0; 16];
    open.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"hello from root\n");
    proxy.cut();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an open connection outlived cut(): {closed:?}"
    );
    let cut = fetch_from(&net, 0, proxy.addr()).await;
    assert!(
        matches!(&cut, Ok(s) if s.is_empty()) || cut.is_err(),
        "reached the service through a cut proxy: {cut:?}"
    );

    proxy.restore();
    assert_eq!(
        fetch_from(&net, 1, proxy.addr()).await,
        Ok("hello from root\n".to_string())
    );

    // Dropping the Nets removes their namespaces and bridges.
    let bridges = [net.bridge_ip(), other.bridge_ip()].map(|ip| {
        let k = ip.octets()[2];
        format!("/sys/class/net/emb{k}br")
    });
    assert!(bridges.iter().all(|b| std::path::Path::new(b).exists()));
    drop(proxy);
    drop(net);
    drop(other);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for name in &names {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} is still in `ip netns list`:\n{list}"
        );
    }
    for bridge in &bridges {
        assert!(!std::path::Path::new(bridge).exists(), "{bridge} is left");
    }
}
