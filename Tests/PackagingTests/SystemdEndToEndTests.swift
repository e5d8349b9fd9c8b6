import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// The Debian package under a real systemd: a Debian 12 machine booted with systemd as
/// PID 1 (systemd-nspawn), the package installed with dpkg, then everything an operator
/// does with it, through to an upgrade and a purge.
///
/// Needs root, systemd-nspawn, the package (`packaging/build-deb`) and the machine's root
/// (`packaging/make-test-root`); `scripts/test` makes both before running the tests.
@Suite(.serialized) struct SystemdEndToEndTests {
  static let promotionID = EventKind.keyPromoted.messageID

  /// What `read` gives once `done` holds, trying every 100 ms (the last reading after `tries`).
  static func poll(tries: Int, _ read: () async throws -> String, until done: (String) -> Bool) async rethrows
    -> String
  {
    var value = try await read()
    for _ in 1..<tries where !done(value) {
      try? await Task.sleep(for: .milliseconds(100))
      value = try await read()
    }
    return value
  }

  /// The package `packaging/build-deb` wrote (revision 1).
  static func builtPackage() throws -> String {
    let dist = BootedContainer.repository + "/dist"
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dist)) ?? []
    let name = try #require(
      names.filter { $0.hasPrefix("license-agent_\(ProductVersion.current)-1_") && $0.hasSuffix(".deb") }
        .first,
      "no dist/license-agent_\(ProductVersion.current)-1_*.deb: run packaging/build-deb (scripts/test does)")
    return dist + "/" + name
  }

  @Test func installedPackageRunsPromotesReloadsSurvivesTheWatchdogUpgradesAndPurges() async throws {
    if let reason = BootedContainer.unavailableReason {
      Issue.record(Comment(rawValue: reason))
      return
    }
    let package = try Self.builtPackage()
    let made = try runProcess(BootedContainer.repository + "/packaging/make-test-root", [])
    try #require(made.status == 0, "packaging/make-test-root: \(made.stderr)")
    let root = made.stdout.trimmingCharacters(in: .whitespacesAndNewlines)

    // The newer build of the upgrade: the same release binaries as revision 2.
    let lab = makeTemporaryDirectory("e2e-lab")
    defer { removeTemporaryDirectory(lab) }
    let newer = try runProcess(
      BootedContainer.repository + "/packaging/build-deb", ["--no-build", "--revision", "2", "--out", lab])
    try #require(newer.status == 0, "build-deb --revision 2: \(newer.stderr)")
    // A package that brings node_exporter's textfile directory, as prometheus-node-exporter
    // does, to install after the agent: it must fire the agent package's dpkg trigger.
    let probe = lab + "/probe"
    try FileManager.default.createDirectory(
      atPath: probe + "/var/lib/prometheus/node-exporter", withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: probe + "/DEBIAN", withIntermediateDirectories: true)
    try """
    Package: textfile-directory-probe
    Version: 1
    Architecture: all
    Maintainer: license-agent tests <tests@example.net>
    Description: ships /var/lib/prometheus/node-exporter only (a test of the trigger)

    """.write(toFile: probe + "/DEBIAN/control", atomically: true, encoding: .utf8)
    let built = try runProcess(
      "/usr/bin/dpkg-deb", ["--root-owner-group", "--build", probe, lab + "/textfile-directory-probe.deb"])
    try #require(built.status == 0, "dpkg-deb: \(built.stderr)")

    // Keys and an issuer made here, handed to the machine through a read-only folder (the
    // keys just before they are added: the machine may take a while to boot under load).
    let issuer = TestIssuer(kid: "e2e-issuer")
    try issuer.jwk.publicJSON.write(toFile: lab + "/e2e-issuer.jwk", atomically: true, encoding: .utf8)
    let code = "ABCDE-12345-FGHIJ-67890"
    let server = try ActivationLab(issuer: issuer, root: lab, codes: [code: ("valid", "90d")])
    try code.write(toFile: lab + "/code", atomically: true, encoding: .utf8)
    chmod(lab, 0o755)
    chmod(lab + "/e2e-issuer.jwk", 0o644)
    chmod(lab + "/code", 0o600)

    let machine = try await BootedContainer.boot(
      root: root, bindReadOnly: ["\(package):/mnt/license-agent.deb", "\(lab):/mnt/lab"])
    defer {
      #expect(throws: Never.self, "nothing the container mounted is left on this machine") {
        try machine.shutdown()
      }
      #expect(!BootedContainer.anyExists(machine.cgroupPaths), "the test's cgroups are gone")
    }

    // Install: the user and group exist, the unit is enabled and running, READY=1 was sent.
    let install = try await machine.run("dpkg -i /mnt/license-agent.deb")
    try #require(install.status == 0, "dpkg -i: \(install.stdout) \(install.stderr)")
    #expect(try await machine.run("systemctl is-active license-agent").stdout == "active\n")
    #expect(try await machine.run("systemctl is-enabled license-agent").stdout == "enabled\n")
    #expect(try await machine.run("getent passwd license-agent && getent group license-admin").status == 0)
    let fresh = try await machine.run("systemctl status license-agent --no-pager").stdout
    #expect(fresh.contains("Status: \"No licence key; add one with agentctl add-key\""), "\(fresh)")

    // A trusted issuer, then a reload: it must keep running and read the trust directory.
    let pidBeforeReload = try await machine.run("systemctl show -p MainPID --value license-agent").stdout
    let reload = try await machine.run(
      "cp /mnt/lab/e2e-issuer.jwk /etc/license-agent/trusted-issuers/ && systemctl reload license-agent")
    #expect(reload.status == 0, "systemctl reload: \(reload.stderr)")
    #expect(
      try await machine.run("systemctl show -p MainPID --value license-agent").stdout == pidBeforeReload)
    #expect(try await machine.run("systemctl is-active license-agent").stdout == "active\n")

    // A hook (N3) under the hardened unit: run after each change as the agent's user, with
    // the event on standard input; what it leaves behind (even in a session of its own) is
    // ended with its cgroup. The package ships the folder, with a README that never runs.
    try """
    #!/bin/sh
    input=$(cat)
    echo "$LICENSE_EVENT $LICENSE_SLOT $LICENSE_SERIAL $(id -un) $input" | systemd-cat -t license-hook
    setsid sleep 300 </dev/null >/dev/null 2>&1 &

    """.write(toFile: lab + "/record-hook", atomically: true, encoding: .utf8)
    chmod(lab + "/record-hook", 0o755)
    #expect(try await machine.run("test -f /etc/license-agent/hooks.d/README").status == 0)
    #expect(
      try await machine.run("install -m 0755 /mnt/lab/record-hook /etc/license-agent/hooks.d/50-record")
        .status
        == 0)

    // agentctl: refused to an unprivileged user (77, naming the group), allowed to root.
    let now = AgentHarness.now()
    let expiry = now + .seconds(20)
    try issuer.key("E2E-A", nbf: now - .days(1), exp: expiry).write(
      toFile: lab + "/active.jws", atomically: true, encoding: .utf8)
    try issuer.key("E2E-R", nbf: now - .days(1), exp: now + .days(90)).write(
      toFile: lab + "/reserve.jws", atomically: true, encoding: .utf8)
    for file in ["active.jws", "reserve.jws"] { chmod(lab + "/" + file, 0o644) }
    try await machine.run("useradd --create-home svmop")
    let refused = try await machine.run("runuser -u svmop -- agentctl add-key /mnt/lab/active.jws")
    #expect(refused.status == 77, "\(refused.stdout) \(refused.stderr)")
    #expect(refused.stderr.contains("license-admin"), "\(refused.stderr)")
    #expect(try await machine.run("runuser -u svmop -- agentctl status").status == 0, "readable by anyone")
    let active = try await machine.run("agentctl add-key /mnt/lab/active.jws")
    #expect(active.status == 0, "\(active.stderr)")
    let reserve = try await machine.run("agentctl add-key --reserve /mnt/lab/reserve.jws")
    #expect(reserve.status == 0, "\(reserve.stderr)")
    let ready = try await machine.run("systemctl status license-agent --no-pager").stdout
    #expect(ready.contains("Status: \"server: E2E-A until") && ready.contains("reserve ready"), "\(ready)")

    // The promotion at expiry, in the unit's journal, explained by the catalog.
    try await Task.sleep(
      for: .microseconds(max(0, expiry.microseconds(since: AgentHarness.now()) + 1_000_000)))
    let promoted = try await Self.poll(tries: 100) {
      try await machine.run("journalctl -u license-agent -o json --no-pager MESSAGE_ID=\(Self.promotionID)")
        .stdout
    } until: {
      !$0.isEmpty
    }
    #expect(promoted.contains("\"LICENSE_SERIAL\":\"E2E-R\""), "\(promoted)")
    #expect(promoted.contains("\"LICENSE_PREVIOUS_SERIAL\":\"E2E-A\""), "\(promoted)")
    let explained = try await machine.run(
      "journalctl -x -u license-agent --no-pager MESSAGE_ID=\(Self.promotionID)"
    ).stdout
    #expect(explained.contains("Subject: Reserve licence key E2E-R promoted in slot server"), "\(explained)")
    #expect(explained.contains("Documentation: man:license-agent(8)"), "\(explained)")
    let after = try await machine.run("systemctl status license-agent --no-pager").stdout
    #expect(after.contains("Status: \"server: E2E-R until"), "\(after)")
    // The hook saw each change, the promotion last, as the journal has it.
    let hooked = try await Self.poll(tries: 100) {
      try await machine.run("journalctl -t license-hook -o cat --no-pager").stdout
    } until: {
      $0.contains("KEY_PROMOTED server E2E-R")
    }
    #expect(hooked.contains("ACTIVE_ADDED server E2E-A license-agent {"), "\(hooked)")
    #expect(hooked.contains("KEY_PROMOTED server E2E-R license-agent {"), "\(hooked)")
    #expect(hooked.contains("\"MESSAGE_ID\":\"\(Self.promotionID)\""), "\(hooked)")
    #expect(try await machine.run("rm /etc/license-agent/hooks.d/50-record").status == 0)
    // Once the last hook has exited (its line may come a moment before).
    let sleeping = try await Self.poll(tries: 50) {
      try await machine.run("pgrep -x sleep").stdout
    } until: {
      $0.isEmpty
    }
    #expect(sleeping.isEmpty, "the hooks' setsid children were ended")

    // Exactly once under the real unit: the agent stopped as if killed after it announced
    // the promotion and before it acknowledged it (its state with KEY_PROMOTED put back in
    // the outbox, as it was before the acknowledgement), then started: it must read the
    // system journal (SupplementaryGroups=systemd-journal), from its own user and unit, to
    // see that KEY_PROMOTED is there already, and not send it again. Without that group it
    // cannot read its own entries back.
    try await machine.run("systemctl stop license-agent")
    let unacknowledged = try await machine.run(
      """
      python3 -c '
      import json
      path = "/var/lib/license-agent/state.json"
      state = json.load(open(path))
      promoted = [d for d in state["delivered"] if d["event"]["kind"] == "KEY_PROMOTED"]
      state["outbox"] = [promoted[-1]["event"]]
      state["delivered"].remove(promoted[-1])
      state["closedCleanly"] = False
      json.dump(state, open(path, "w"))
      print(len(state["outbox"]))'
      """)
    #expect(unacknowledged.stdout == "1\n", "\(unacknowledged.stdout) \(unacknowledged.stderr)")
    #expect(try await machine.run("systemctl start license-agent").status == 0)
    let replayed = try await Self.poll(tries: 100) {
      try await machine.run(
        "journalctl -u license-agent -o json --no-pager MESSAGE='Events of an interrupted change are replayed'"
      )
      .stdout
    } until: {
      !$0.isEmpty
    }
    #expect(replayed.contains("\"ALREADY_DELIVERED\":\"1\""), "\(replayed)")
    _ = try await machine.run("agentctl status && journalctl --sync")
    let promotions = try await machine.run(
      "journalctl -o cat --no-pager MESSAGE_ID=\(Self.promotionID) LICENSE_SERIAL=E2E-R | wc -l")
    #expect(promotions.stdout == "1\n", "KEY_PROMOTED sent again after the restart: \(promotions.stdout)")

    // journald's rate limit drops an event it reported as taken (issue 20). With a burst of 1
    // entry per 10 s for the unit (a drop-in, as an administrator may set; journald scales
    // it with the free space, per priority), reserves added one after another until one's
    // RESERVE_ADDED (info) is missing: journald dropped it. The agent finds it missing 35 s
    // later, past the window, and sends it again with LICENSE_REPLAYED=1, once.
    let dropIn = "/etc/systemd/system/license-agent.service.d/ratelimit.conf"
    try await machine.run(
      "mkdir -p \(dropIn.dropLast(14)) && printf '[Service]\\nLogRateLimitIntervalSec=10s\\nLogRateLimitBurst=1\\n' >\(dropIn)"
        + " && systemctl daemon-reload && systemctl restart license-agent")
    let later = AgentHarness.now()
    var dropped: String?
    for index in 1...40 where dropped == nil {
      let serial = "E2E-B\(index)"
      try issuer.key(serial, nbf: later - .days(1), exp: later + .days(100 + Int64(index))).write(
        toFile: lab + "/b.jws", atomically: true, encoding: .utf8)
      chmod(lab + "/b.jws", 0o644)
      #expect(try await machine.run("agentctl add-key --reserve /mnt/lab/b.jws").status == 0)
      let seen = try await machine.run(
        "journalctl --sync; journalctl -u license-agent -o cat --no-pager MESSAGE_ID=\(EventKind.reserveAdded.messageID) LICENSE_SERIAL=\(serial) | wc -l"
      )
      if seen.stdout == "0\n" { dropped = serial }
    }
    let lostSerial = try #require(dropped, "journald's rate limit dropped no RESERVE_ADDED in 40 adds")
    let added =
      "journalctl -u license-agent -o json --no-pager MESSAGE_ID=\(EventKind.reserveAdded.messageID) LICENSE_SERIAL=\(lostSerial)"
    let resent = try await Self.poll(tries: 700) {
      try await machine.run(added).stdout
    } until: {
      !$0.isEmpty
    }
    #expect(resent.contains("\"LICENSE_REPLAYED\":\"1\""), "\(resent)")
    #expect(resent.split(separator: "\n").count == 1, "sent again once: \(resent)")
    try await machine.run("rm \(dropIn) && systemctl daemon-reload && systemctl restart license-agent")

    // Metrics: under the hardened unit the agent writes node_exporter's textfile directory
    // (root's; the package's tmpfiles ACL lets the agent's user in), and Debian's
    // node_exporter, started here on a loopback port as its own user, serves the series.
    let metrics = "/var/lib/prometheus/node-exporter/license-agent.prom"
    let owned = try await machine.run("stat -c '%U %a' \(metrics)")
    let acl = try await machine.run(
      "stat -c '%U' /var/lib/prometheus/node-exporter && getfacl -p /var/lib/prometheus/node-exporter")
    let logged = try await machine.run("journalctl -u license-agent --no-pager -o cat | grep -i metrics")
      .stdout
    #expect(owned.stdout == "license-agent 644\n", "\(owned.stdout) \(owned.stderr) \(acl.stdout) \(logged)")
    // The directory stays root's; the agent's user has an entry of its own.
    #expect(
      acl.stdout.hasPrefix("root\n") && acl.stdout.contains("user:license-agent:rwx\n"), "\(acl.stdout)")
    let promotedSeries =
      "license_agent_key_expiry_timestamp_seconds{slot=\"server\",role=\"active\",serial=\"E2E-R\"}"
    let written = try await Self.poll(tries: 50) {
      try await machine.run("cat \(metrics)").stdout
    } until: {
      $0.contains(promotedSeries)
    }
    #expect(written.contains(promotedSeries), "\(written)")
    let port = Int.random(in: 20_000..<60_000)
    let exporter = try await machine.run(
      "systemd-run --unit=node-exporter-test -p User=prometheus /usr/bin/prometheus-node-exporter "
        + "--web.listen-address=127.0.0.1:\(port) --collector.disable-defaults --collector.textfile "
        + "--collector.textfile.directory=/var/lib/prometheus/node-exporter")
    #expect(exporter.status == 0, "\(exporter.stderr)")
    let scraped = try await Self.poll(tries: 50) {
      try await machine.run(
        "python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:\(port)/metrics\").read().decode())'"
      ).stdout
    } until: {
      !$0.isEmpty
    }
    #expect(scraped.contains("node_textfile_scrape_error 0\n"), "\(scraped)")
    #expect(scraped.contains("license_agent_promotions_total{slot=\"server\"} 1\n"), "\(scraped)")
    #expect(
      scraped.contains(
        "license_agent_key_expiry_timestamp_seconds{role=\"active\",serial=\"E2E-R\",slot=\"server\"}"),
      "\(scraped)")
    try await machine.run("systemctl stop node-exporter-test")

    // node_exporter installed after the agent: without the ACL entry, a package that brings
    // the textfile directory fires the agent package's trigger, which gives it back.
    let directoryACL = "getfacl -p /var/lib/prometheus/node-exporter"
    try await machine.run("setfacl -x u:license-agent /var/lib/prometheus/node-exporter")
    #expect(try await !machine.run(directoryACL).stdout.contains("license-agent"))
    let probed = try await machine.run("dpkg -i /mnt/lab/textfile-directory-probe.deb")
    #expect(probed.status == 0, "\(probed.stdout) \(probed.stderr)")
    #expect(
      try await machine.run(directoryACL).stdout.contains("user:license-agent:rwx\n"), "the trigger ran")

    // A daemon that stops answering is restarted by the watchdog, with its state intact.
    let stateBefore = try await machine.run("md5sum /var/lib/license-agent/state.json").stdout
    let stoppedPID = try await machine.run("systemctl show -p MainPID --value license-agent").stdout
      .trimmingCharacters(in: .whitespacesAndNewlines)
    try await machine.run("kill -STOP \(stoppedPID)")
    var restartedPID = stoppedPID
    for _ in 0..<90 where restartedPID == stoppedPID || restartedPID == "0" {
      try await Task.sleep(for: .seconds(1))
      let state = try await machine.run("systemctl is-active license-agent").stdout
      let pid = try await machine.run("systemctl show -p MainPID --value license-agent").stdout
        .trimmingCharacters(in: .whitespacesAndNewlines)
      if state == "active\n" { restartedPID = pid }
    }
    #expect(restartedPID != stoppedPID, "restarted by the watchdog within 90 s")
    let watchdog = try await machine.run("journalctl -u license-agent --no-pager -o cat").stdout
    #expect(watchdog.contains("Watchdog timeout"), "\(watchdog)")
    #expect(try await machine.run("md5sum /var/lib/license-agent/state.json").stdout == stateBefore)
    let status = try await machine.run("agentctl status --json").stdout
    #expect(status.contains("\"serial\":\"E2E-R\""), "\(status)")

    // An upgrade to a newer build restarts the agent and keeps the state.
    let upgrade = try await machine.run("dpkg -i /mnt/lab/license-agent_\(ProductVersion.current)-2_*.deb")
    #expect(upgrade.status == 0, "upgrade: \(upgrade.stdout) \(upgrade.stderr)")
    #expect(
      try await machine.run("dpkg-query -W -f '${Version}' license-agent").stdout
        == "\(ProductVersion.current)-2")
    let upgradedPID = try await machine.run("systemctl show -p MainPID --value license-agent").stdout
      .trimmingCharacters(in: .whitespacesAndNewlines)
    #expect(upgradedPID != restartedPID && upgradedPID != "0", "restarted on upgrade")
    #expect(try await machine.run("systemctl is-active license-agent").stdout == "active\n")
    #expect(try await machine.run("md5sum /var/lib/license-agent/state.json").stdout == stateBefore)

    // HTTPS activation's client program runs under the hardened unit: a code activated
    // against the reference server on loopback (the machine shares the host's network).
    try await machine.run(
      "printf '[activation]\\nurl = \"\(server.url)\"\\n' >/etc/license-agent/agent.toml && systemctl reload license-agent"
    )
    let activated = try await machine.run("agentctl activate --code-file /mnt/lab/code")
    #expect(activated.status == 0, "agentctl activate: \(activated.stdout) \(activated.stderr)")
    let renewable = try await machine.run("agentctl status --json").stdout
    #expect(renewable.contains("\"codeHint\":\"67890\""), "\(renewable)")
    // The code is in no journal entry and in no file others may read.
    #expect(try await machine.run("journalctl -o export | grep -c \(code)").stdout == "0\n")
    let readable = try await machine.run(
      "find /var/lib/license-agent /etc/license-agent /run/license-agent -type f -perm /044 -exec grep -l \(code) {} +"
    )
    #expect(readable.stdout.isEmpty, "\(readable.stdout)")

    // A client cannot escape its attempt (issue 20): one that leaves `setsid sleep 300 &`
    // behind. Under the unit (Delegate=yes) each attempt has a cgroup of its own, ended whole.
    let escapeNow = AgentHarness.now()
    try issuer.key("E2E-ESC", nbf: escapeNow - .days(1), exp: escapeNow + .days(30)).write(
      toFile: lab + "/escape.jws", atomically: true, encoding: .utf8)
    try """
    #!/bin/sh
    cat >/dev/null
    setsid sleep 300 </dev/null >/dev/null 2>&1 &
    printf '{"key": "%s"}\\n' "$(cat /mnt/lab/escape.jws)"

    """.write(toFile: lab + "/escape-client", atomically: true, encoding: .utf8)
    chmod(lab + "/escape.jws", 0o644)
    chmod(lab + "/escape-client", 0o755)
    try await machine.run(
      "printf '[activation]\\nclient = \"exec\"\\ncommand = [\"/mnt/lab/escape-client\"]\\n' >/etc/license-agent/agent.toml && systemctl reload license-agent"
    )
    let escaped = try await machine.run("agentctl activate --code-file /mnt/lab/code")
    #expect(escaped.status == 0, "\(escaped.stdout) \(escaped.stderr)")
    #expect(try await machine.run("pgrep -x sleep").stdout.isEmpty, "the client's setsid child was ended")
    let unitCgroup = try await machine.run(
      "ls /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/$(systemctl show -p MainPID --value license-agent)/cgroup)"
    )
    #expect(!unitCgroup.stdout.contains("attempt-"), "no attempt's cgroup is left: \(unitCgroup.stdout)")
    let mode = try await machine.run(
      "journalctl -u license-agent -o cat --no-pager | grep -c 'in a cgroup of their own'")
    #expect(mode.stdout != "0\n", "the agent runs its attempts in cgroups under the unit")

    // Nothing in the unit's journal from a refused system call: the seccomp filter allows
    // libdispatch's renice of its worker threads (a refusal is EPERM, errno=1). Lowering a
    // thread's nice value to the unit's -4 also needs LimitNICE=-4 (RLIMIT_NICE 24), which
    // systemd can grant only up to the hard limit it has itself: in a container whose
    // limit is lower (this machine's is 0, without CAP_SYS_RESOURCE) a thread that a
    // default-priority task created is refused the renice by the kernel (EACCES,
    // errno=13), and libdispatch says so; where the limit was applied, nothing at all.
    let limits = try await machine.run(
      "grep 'Max nice priority' /proc/$(systemctl show -p MainPID --value license-agent)/limits")
    let niceLimit = limits.stdout.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).first
    #expect(
      !watchdog.contains("Failed to set thread priority for worker thread: pqc=") || niceLimit != "24",
      "LimitNICE=-4 was applied (\(limits.stdout)), and still a renice failed")
    #expect(!watchdog.contains("errno=1\n"), "libdispatch's renice refused by the seccomp filter")

    // Removal stops the agent and keeps the state; purge removes it.
    #expect(
      try await machine.run("test -f \(metrics)").status == 0, "the restarted agent wrote its metrics again")
    let remove = try await machine.run("dpkg --remove license-agent")
    #expect(remove.status == 0, "\(remove.stderr)")
    #expect(try await machine.run("systemctl is-active license-agent").stdout != "active\n")
    #expect(try await machine.run("test -e \(metrics)").status != 0, "the metrics go with the agent")
    #expect(
      try await machine.run("test -f /var/lib/license-agent/state.json").status == 0, "state kept on remove")
    let purge = try await machine.run("dpkg --purge license-agent")
    #expect(purge.status == 0, "\(purge.stderr)")
    #expect(try await machine.run("test -e /var/lib/license-agent").status != 0, "state removed on purge")
    #expect(try await machine.run("test -e /etc/license-agent").status != 0, "configuration removed on purge")
    let aclAfter = try await machine.run("getfacl -p /var/lib/prometheus/node-exporter").stdout
    #expect(!aclAfter.contains("license-agent"), "the ACL entry goes with the package: \(aclAfter)")
  }
}
