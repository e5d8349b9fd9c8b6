// swift-tools-version:6.0
// license-agent: keeps an SVM's licence from lapsing by accident.
// Layers (see README): LicenseCore decides, edge targets act, executables wire.
import PackageDescription

/// The packaged programs are linked with -z now (full RELRO: every symbol bound at start,
/// the GOT read-only after it), as Debian's hardening flags ask (lintian: hardening-no-bindnow).
let bindNow: [LinkerSetting] = [.unsafeFlags(["-Xlinker", "-z", "-Xlinker", "now"])]

let package = Package(
  name: "license-agent",
  products: [
    .executable(name: "license-agent", targets: ["license-agent"]),
    .executable(name: "agentctl", targets: ["agentctl"]),
    .executable(name: "license-keytool", targets: ["license-keytool"]),
    .executable(name: "license-agent-bench", targets: ["license-agent-bench"]),
    .executable(name: "license-agent-activate-https", targets: ["license-agent-activate-https"]),
    .executable(name: "activation-server", targets: ["activation-server"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
  ],
  targets: [
    // Debian's libsodium for Ed25519: no crypto compiled on every build (README, "Why libsodium").
    .systemLibrary(
      name: "CSodium",
      pkgConfig: "libsodium",
      providers: [.apt(["libsodium-dev"])]
    ),
    // A JSON value with a stable serialization, shared by the core and Varlink.
    .target(name: "SimpleJSON"),
    // Standard streams and trimming without Foundation's full module (packaging/README.md).
    .target(name: "StandardIO"),
    // The pure core: keys, rules, state machine. No I/O, no clock.
    .target(name: "LicenseCore", dependencies: ["CSodium", "SimpleJSON"]),
    // libsystemd (journal, notify, watchdog) and Linux calls Glibc lacks (timerfd, SO_PEERCRED).
    .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
    .systemLibrary(name: "CLinux"),
    // Edge: the one reader of the wall clock (the core never reads a clock).
    .target(name: "SystemClock", dependencies: ["LicenseCore"]),
    // Edge: the only target that talks to systemd (imports CSystemd).
    .target(
      name: "Systemd",
      dependencies: ["CSystemd", "LicenseCore", .product(name: "Logging", package: "swift-log")]
    ),
    // The Varlink protocol, domain-free: framing, errors, org.varlink.service, server, client.
    .target(name: "Varlink", dependencies: ["SimpleJSON", "CLinux", "StandardIO"]),
    // The io.licenseagent.Agent interface: IDL, wire types and status, shared by daemon and agentctl.
    .target(name: "ControlInterface", dependencies: ["LicenseCore", "SimpleJSON"]),
    // Edge: durable state and the trust directory, on real files.
    .target(name: "LicenseStorage", dependencies: ["LicenseCore", "StandardIO"]),
    // The configuration (agent.toml, read by a small parser driven by a table of its
    // settings) and the paths of contract §6: shared by the daemon and agentctl.
    .target(name: "AgentSettings", dependencies: ["LicenseCore", "StandardIO"]),
    // Edge: the running agent (timers, clock watch, control server, activation, metrics).
    .target(
      name: "AgentRuntime",
      dependencies: [
        "AgentSettings", "CLinux", "ControlInterface", "LicenseCore", "LicenseStorage", "SimpleJSON",
        "StandardIO",
        "SystemClock",
        "Systemd", "Varlink",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    .executableTarget(
      name: "license-agent",
      dependencies: [
        "AgentRuntime", "AgentSettings", "LicenseCore", "LicenseStorage", "StandardIO", "Systemd",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "UnixSignals", package: "swift-service-lifecycle"),
      ],
      linkerSettings: bindNow
    ),
    // agentctl talks only Varlink: no libsystemd, no HTTP stack.
    .executableTarget(
      name: "agentctl",
      dependencies: [
        "AgentSettings", "ControlInterface", "LicenseCore", "LicenseStorage", "SimpleJSON", "StandardIO",
        "SystemClock", "Varlink",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      linkerSettings: bindNow
    ),
    .executableTarget(
      name: "license-keytool",
      dependencies: [
        "LicenseCore", "LicenseStorage", "SimpleJSON", "StandardIO", "SystemClock",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      linkerSettings: bindNow
    ),
    // The HTTPS activation client program (Debian's libcurl): the daemon never links HTTP or TLS.
    .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
    .executableTarget(
      name: "license-agent-activate-https", dependencies: ["CCurl", "SimpleJSON", "StandardIO"],
      linkerSettings: bindNow),
    // The reference activation server for labs and tests (FlyingFox: no NIO to build).
    .executableTarget(
      name: "activation-server",
      dependencies: [
        "LicenseCore", "SystemClock", .product(name: "FlyingFox", package: "FlyingFox"),
        .product(name: "FlyingSocks", package: "FlyingFox"),
      ]
    ),
    // Benchmarks: figures, not assertions.
    .executableTarget(
      name: "license-agent-bench",
      dependencies: [
        "CLinux", "LicenseCore", "LicenseStorage", "SimpleJSON", "SystemClock", "Varlink",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    // Test twins and fixtures shared by the test targets.
    .target(
      name: "LicenseTestSupport", dependencies: ["LicenseCore", "SystemClock"],
      path: "Tests/LicenseTestSupport"),
    // The runtime's twins (store, sink, clock, timer, notifier, activation client).
    .target(
      name: "RuntimeTestSupport",
      dependencies: ["AgentRuntime", "LicenseCore", "LicenseStorage", "SystemClock", "Systemd"],
      path: "Tests/RuntimeTestSupport"),
    // Fuzzing (Fuzz/README.md): libFuzzer targets when built with -DFUZZING and
    // -sanitize=fuzzer; built normally, each replays its corpus (the test suite does).
    .systemLibrary(name: "CFuzzer", path: "Fuzz/CFuzzer"),
    .target(name: "FuzzSupport", dependencies: ["CFuzzer"], path: "Fuzz/Support"),
    .executableTarget(
      name: "fuzz-key-parser", dependencies: ["FuzzSupport", "LicenseCore"], path: "Fuzz/KeyParser"),
    .executableTarget(
      name: "fuzz-varlink", dependencies: ["FuzzSupport", "Varlink"], path: "Fuzz/VarlinkMessages"),
    .executableTarget(
      name: "fuzz-configuration", dependencies: ["AgentSettings", "FuzzSupport"], path: "Fuzz/Configuration"),
    .testTarget(name: "LicenseCoreTests", dependencies: ["LicenseCore", "LicenseTestSupport"]),
    .testTarget(
      name: "LicenseStorageTests", dependencies: ["LicenseCore", "LicenseStorage", "LicenseTestSupport"],
      exclude: ["Fixtures"]),
    .testTarget(
      name: "SystemdTests",
      dependencies: ["Systemd", "LicenseCore", .product(name: "Logging", package: "swift-log")]
    ),
    .testTarget(
      name: "ControlInterfaceTests",
      dependencies: ["ControlInterface", "LicenseCore", "SimpleJSON", "LicenseTestSupport"]),
    .testTarget(name: "VarlinkTests", dependencies: ["Varlink", "SimpleJSON", "LicenseTestSupport"]),
    .testTarget(
      name: "AgentRuntimeTests",
      dependencies: [
        "AgentRuntime", "AgentSettings", "LicenseCore", "LicenseStorage", "LicenseTestSupport",
        "RuntimeTestSupport",
        "SimpleJSON", "SystemClock",
        "Systemd", "Varlink", .product(name: "Logging", package: "swift-log"),
      ]),
    .testTarget(
      name: "AgentEndToEndTests",
      dependencies: [
        "ControlInterface", "LicenseCore", "LicenseStorage", "LicenseTestSupport", "SimpleJSON", "Systemd",
        "Varlink",
      ],
      resources: [.copy("Fixtures")]
    ),
    .testTarget(
      name: "ActivationClientTests",
      dependencies: ["LicenseTestSupport"],
      resources: [.copy("Fixtures")]
    ),
    .testTarget(name: "StandardIOTests", dependencies: ["StandardIO"]),
    .testTarget(name: "FuzzCorpusTests", dependencies: ["LicenseTestSupport"]),
    .testTarget(
      name: "PackagingTests",
      dependencies: ["AgentRuntime", "AgentSettings", "LicenseCore", "LicenseTestSupport"]),
    .testTarget(
      name: "KeytoolTests",
      dependencies: ["LicenseCore", "LicenseTestSupport"],
      resources: [.copy("Fixtures")]
    ),
  ],
  swiftLanguageModes: [.v6]
)
