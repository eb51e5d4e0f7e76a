"""Who is asking, in process: the `agents` block and `agent.*` paths (validation table), conditions
on the agent judged once per (policy, agent), the agent bound into an approval's fingerprint, the
agent and client recorded on requests and events, `--agent` on the fast command line, and the
webhook bodies. A client that names itself like a listed agent gets no roles.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from intercept.approvals.fingerprint import call_fingerprint
from intercept.approvals.requester import client_label
from intercept.approvals.webhook import ApproverCommands, generic_body, slack_body
from intercept.audit.hashing import ArgumentHasher
from intercept.cmd.run_proxy import ProxyArgs, fast_proxy_args
from intercept.engine.evaluate import decide
from intercept.engine.plan import plan_for
from intercept.policy import PolicyError, parse_policy
from intercept.policy.agents import bind_agent
from intercept.policy.model import Agent
from intercept.proxy.call_handler import Answer, Forward
from intercept.store.approvals import ApprovalRecord, ApprovalStore
from intercept.store.database import connect
from tests.test_call_handler import Harness

POLICY = """\
version: "1"
agents:
  ci-bot: {roles: [subordinate]}
  alice: {roles: [senior, ops]}
  bob: {roles: [senior]}
tools:
  deploy:
    rules:
      - name: seniors only
        conditions: [{path: agent.roles, op: contains, value: senior}]
        on_deny: "Only a senior agent may ask to deploy"
      - name: humans deploy
        action: require_approval
  read:
    rules:
      - name: named agents read
        conditions: [{path: agent.name, op: exists, value: true}]
  restart:
    rules:
      - name: ops restarts need a human
        action: require_approval
        conditions: [{path: agent.roles, op: contains, value: ops}]
  query:
    rules:
      - name: not the ci bot
        conditions:
          - {path: args.sql, op: exists, value: true}
          - {path: agent.name, op: not_in, value: [ci-bot]}
"""


def policy_for(agent: str | None, text: str = POLICY) -> Any:
    return bind_agent(parse_policy(text), agent)


# -- validation ------------------------------------------------------------------------------------


def policy_with(agents: str = "", condition: str = "{path: agent.name, op: eq, value: alice}") -> str:
    head = f"agents:\n{textwrap.indent(textwrap.dedent(agents).strip(), '  ')}\n" if agents else ""
    return f'version: "1"\n{head}tools:\n  t:\n    rules:\n      - name: r\n        conditions: [{condition}]\n'


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    return raised.value.errors


@pytest.mark.parametrize(
    ("text", "error"),
    [
        pytest.param(
            'version: "1"\nagents:\n', 'agents: agents must not be null (write "agents: {}" for none)', id="null-block"
        ),
        pytest.param('version: "1"\nagents: [alice]\n', "agents: agents must be a mapping", id="not-a-mapping"),
        pytest.param(
            policy_with("123: {roles: []}"), 'agents: an agent name must be a string, got "123"', id="number-name"
        ),
        pytest.param(
            policy_with('"": {roles: []}'), 'agents: an agent name must not be empty, got ""', id="empty-name"
        ),
        pytest.param(
            policy_with('" alice": {roles: []}'),
            'agents: an agent name must not start or end with spaces, got " alice"',
            id="spaced-name",
        ),
        pytest.param(
            policy_with('"al\\u202eice": {roles: []}'),
            'agents: an agent name must not contain control or bidirectional characters, got "al\u202eice"',
            id="bidi-name",
        ),
        pytest.param(
            policy_with(f"{'a' * 129}: {{roles: []}}"),
            f'agents: an agent name must be at most 128 characters, got "{"a" * 129}"',
            id="long-name",
        ),
        pytest.param(
            policy_with("alice:"),
            "agents.alice: an agent entry must be a mapping such as {roles: [reviewer]}, not null",
            id="null-entry",
        ),
        pytest.param(
            policy_with("alice: senior"),
            "agents.alice: an agent entry must be a mapping such as {roles: [reviewer]}, not a str",
            id="text-entry",
        ),
        pytest.param(
            policy_with("alice: {roles: senior}"), "agents.alice.roles: roles must be a list", id="roles-not-list"
        ),
        pytest.param(
            policy_with("alice: {roles: }"),
            'agents.alice.roles: roles must be a list, not null (write "roles: []" for none)',
            id="roles-null",
        ),
        pytest.param(
            policy_with("alice: {roles: [1]}"),
            'agents.alice.roles[0]: a role must be a string, got "1"',
            id="role-number",
        ),
        pytest.param(
            policy_with('alice: {roles: [""]}'),
            'agents.alice.roles[0]: a role must not be empty, got ""',
            id="role-empty",
        ),
        pytest.param(policy_with("alice: {roles: [a, a]}"), 'agents.alice.roles: duplicate role "a"', id="role-twice"),
        pytest.param(
            policy_with("alice: {role: [senior]}"),
            'agents.alice: unknown key "role" (did you mean "roles"?)',
            id="typo-key",
        ),
        pytest.param(
            policy_with("alice: {roles: [a], level: 3}"),
            'agents.alice: unknown key "level" (expected one of: roles)',
            id="unknown-key",
        ),
        pytest.param(
            policy_with(condition="{path: agent.role, op: contains, value: senior}"),
            'tools.t.rules[0].conditions[0]: unknown agent path "agent.role": use "agent.name" or "agent.roles"'
            ' (did you mean "agent.roles"?)',
            id="agent-path-typo",
        ),
        pytest.param(
            policy_with(condition="{path: agent.client, op: eq, value: claude}"),
            'tools.t.rules[0].conditions[0]: unknown agent path "agent.client": use "agent.name" or "agent.roles"',
            id="agent-path-unknown",
        ),
        pytest.param(
            policy_with(condition="{path: agent.name.first, op: eq, value: a}"),
            'tools.t.rules[0].conditions[0]: unknown agent path "agent.name.first": use "agent.name" or "agent.roles"'
            ' (did you mean "agent.name"?)',
            id="agent-path-deeper",
        ),
        pytest.param(
            policy_with(condition="{path: agnet.name, op: eq, value: a}"),
            'tools.t.rules[0].conditions[0]: path must start with "args." or "state.", got "agnet.name"'
            ' (did you mean "agent.name"?)',
            id="agent-root-typo",
        ),
        pytest.param(
            policy_with(condition="{path: agent.roles, op: gt, value: 1}"),
            'tools.t.rules[0].conditions[0]: operator "gt" can never hold for agent.roles (a list of roles)',
            id="numeric-on-roles",
        ),
        pytest.param(
            policy_with(condition="{path: agent.roles, op: regex, value: sen}"),
            'tools.t.rules[0].conditions[0]: operator "regex" can never hold for agent.roles (a list of roles)',
            id="regex-on-roles",
        ),
        pytest.param(
            policy_with(condition="{path: agent.name, op: lte, value: 3}"),
            'tools.t.rules[0].conditions[0]: operator "lte" can never hold for agent.name (a string)',
            id="numeric-on-name",
        ),
    ],
)
def test_bad_agents_and_agent_paths_are_located_errors(text: str, error: str) -> None:
    assert error in errors_of(text)


def test_a_valid_agents_block_is_read() -> None:
    policy = parse_policy(POLICY)
    assert dict(policy.agents) == {"ci-bot": ("subordinate",), "alice": ("senior", "ops"), "bob": ("senior",)}
    assert policy.agent == Agent()  # unbound: no agent, no roles


def test_the_agents_block_is_part_of_the_policy_digest() -> None:
    """A reload that changes only roles is a new policy (events, status and staleness see it)."""
    changed = POLICY.replace("bob: {roles: [senior]}", "bob: {roles: []}")
    assert parse_policy(POLICY).digest != parse_policy(changed).digest


# -- the engine ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "tool", "arguments", "verdict", "rule"),
    [
        ("alice", "deploy", {}, "require_approval", "humans deploy"),
        ("bob", "deploy", {}, "require_approval", "humans deploy"),
        ("ci-bot", "deploy", {}, "deny", "seniors only"),
        ("mallory", "deploy", {}, "deny", "seniors only"),  # not listed: no roles
        (None, "deploy", {}, "deny", "seniors only"),  # no --agent: no roles
        ("mallory", "read", {}, "allow", ""),
        (None, "read", {}, "deny", "named agents read"),  # agent.name is absent without --agent
        ("alice", "restart", {}, "require_approval", "ops restarts need a human"),
        ("bob", "restart", {}, "allow", ""),
        ("ci-bot", "query", {"sql": "x"}, "deny", "not the ci bot"),
        ("bob", "query", {"sql": "x"}, "allow", ""),
        ("bob", "query", {}, "deny", "not the ci bot"),  # the argument condition still runs per call
        ("bob", "query", {"SQL": "x"}, "deny", "(ambiguous argument)"),  # in order: args first
    ],
)
def test_conditions_on_the_agent(
    agent: str | None, tool: str, arguments: dict[str, Any], verdict: str, rule: str
) -> None:
    decision = decide(policy_for(agent), tool, arguments)
    assert (decision.verdict, decision.rule_name) == (verdict, rule)


def test_a_denied_agent_sees_the_rules_message() -> None:
    assert decide(policy_for("ci-bot"), "deploy", {}).message == "Only a senior agent may ask to deploy"


def test_agent_conditions_cost_a_call_nothing() -> None:
    """Judged when the plan is built: a holding condition is not in the plan at all; a failing
    one is a constant in its place. The calls of an agent the rule lets through walk no test."""
    senior = plan_for(policy_for("alice"), "deploy")
    assert [len(tests) for _, tests in senior] == [0, 0]
    junior = plan_for(policy_for("ci-bot"), "deploy")
    assert [len(tests) for _, tests in junior] == [1, 0]
    assert junior[0][1][0]({}, {}) is False


def test_binding_gives_a_new_policy_with_its_own_plans() -> None:
    """Plans built for one agent are never used for another (they live on the policy object)."""
    policy = parse_policy(POLICY)
    alice = bind_agent(policy, "alice")
    assert decide(alice, "deploy", {}).verdict == "require_approval"  # builds alice's plan
    ci = bind_agent(alice, "ci-bot")
    assert ci is not alice and ci.plans == {}
    assert decide(ci, "deploy", {}).verdict == "deny"
    assert bind_agent(alice, "alice") is alice


def test_a_reload_that_removes_a_role_takes_it_away() -> None:
    """The proxy binds every reloaded policy to its agent: roles come from the file in force."""
    demoted = POLICY.replace("alice: {roles: [senior, ops]}", "alice: {roles: [ops]}")
    assert decide(policy_for("alice"), "deploy", {}).verdict == "require_approval"
    assert decide(policy_for("alice", demoted), "deploy", {}).verdict == "deny"


# -- the fingerprint -------------------------------------------------------------------------------

HASHER = ArgumentHasher(b"k" * 32)


def test_an_approval_is_bound_to_the_agent_that_asked() -> None:
    args = {"path": "a"}
    alice = call_fingerprint(HASHER, "files", "deploy", args, "d1", agent="alice")
    bob = call_fingerprint(HASHER, "files", "deploy", args, "d1", agent="bob")
    nobody = call_fingerprint(HASHER, "files", "deploy", args, "d1")
    assert len({alice, bob, nobody}) == 3
    # without an agent the fingerprint is what it was before agents existed (existing approvals stay valid)
    assert nobody == HASHER.digest(b'{"arguments":{"path":"a"},"rule":"d1","server":"files","tool":"deploy"}')
    tool_scope = call_fingerprint(HASHER, "files", "deploy", args, "d1", True, "alice")
    assert tool_scope != call_fingerprint(HASHER, "files", "deploy", args, "d1", True, "bob")


def test_an_agent_name_cannot_pose_as_another_field() -> None:
    """The agent is its own key of canonical JSON: no name makes another agent's fingerprint."""
    crafted = 'alice","tool":"deploy'
    assert call_fingerprint(HASHER, "files", "deploy", {}, "d1", agent=crafted) != call_fingerprint(
        HASHER, "files", "deploy", {}, "d1", agent="alice"
    )


# -- the gate: agent and client on the record and the events ---------------------------------------


def stored(state_dir: Path) -> list[ApprovalRecord]:
    connection = connect(state_dir)
    try:
        return ApprovalStore(connection).list()
    finally:
        connection.close()


@pytest.fixture
async def harness(tmp_path: Path) -> Any:
    made = Harness(tmp_path)
    yield made
    await made.drain_store()
    made.worker.close()


async def test_a_subordinate_agent_is_denied_before_any_request_is_made(harness: Harness) -> None:
    harness.policy = policy_for("ci-bot")
    outcome = await harness.call("deploy")
    assert isinstance(outcome, Answer) and "Only a senior agent" in json.dumps(outcome.message)
    assert stored(harness.state_dir) == []
    assert not [r for r in harness.records() if r["type"].startswith("approval")]


async def test_a_client_naming_itself_like_a_senior_agent_gets_no_roles(harness: Harness) -> None:
    harness.policy = policy_for(None)
    harness.handler.client.name = "alice"  # clientInfo.name from initialize: self-asserted
    outcome = await harness.call("deploy")
    assert isinstance(outcome, Answer) and "Only a senior agent" in json.dumps(outcome.message)
    assert stored(harness.state_dir) == []


async def test_the_request_records_agent_and_client(harness: Harness) -> None:
    harness.policy = policy_for("alice")
    harness.handler.client.name = "evil\x1b[2J\u202eclient"
    outcome = await harness.call("deploy", {"to": "prod"})
    assert isinstance(outcome, Answer) and outcome.message["error"]["code"] == -32003
    (record,) = stored(harness.state_dir)
    assert (record.agent, record.client) == ("alice", "evil\\x1b[2J\\u202eclient")
    requested = [r for r in harness.records() if r["type"] == "approval_requested"]
    assert [(r["agent"], r["client"]) for r in requested] == [("alice", "evil\\x1b[2J\\u202eclient")]


async def test_without_agent_or_client_name_nothing_is_invented(harness: Harness) -> None:
    harness.policy = parse_policy('version: "1"\ntools:\n  deploy:\n    rules: [{name: h, action: require_approval}]\n')
    outcome = await harness.call("deploy")
    assert isinstance(outcome, Answer)
    (record,) = stored(harness.state_dir)
    assert (record.agent, record.client) == (None, None)
    (requested,) = [r for r in harness.records() if r["type"] == "approval_requested"]
    assert "agent" not in requested and "client" not in requested


async def test_the_stateless_era_client_name_comes_from_the_request(harness: Harness) -> None:
    harness.policy = policy_for("bob")
    harness.handler.client.name = "from-initialize"
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "stateless-client", "version": "1"},
    }
    await harness.call("deploy", params={"name": "deploy", "arguments": {}, "_meta": meta})
    (record,) = stored(harness.state_dir)
    assert record.client == "stateless-client"


async def test_another_agents_identical_call_needs_its_own_approval(harness: Harness) -> None:
    """Two agents on one state dir: alice's approval is hers; bob's identical call opens its own
    request and runs only once a human approves that one."""
    harness.policy = policy_for("alice")
    first = await harness.call("deploy", {"to": "prod"})
    harness.approve_all()
    harness.policy = policy_for("bob")
    bobs = await harness.call("deploy", {"to": "prod"})
    assert isinstance(bobs, Answer) and bobs.message["error"]["code"] == -32003
    assert isinstance(first, Answer)
    assert bobs.message["error"]["data"]["approval_id"] != first.message["error"]["data"]["approval_id"]
    assert sorted(r.status for r in stored(harness.state_dir)) == ["approved", "pending"]
    harness.policy = policy_for("alice")
    assert isinstance(await harness.call("deploy", {"to": "prod"}), Forward)
    assert sorted((r.agent, r.status) for r in stored(harness.state_dir)) == [("alice", "consumed"), ("bob", "pending")]


# -- the client's name, the command line, the webhook ---------------------------------------------


@pytest.mark.parametrize(
    ("given", "recorded"),
    [
        ("", None),
        (None, None),
        ("Claude Code", "Claude Code"),
        ("a\nb", "a\\x0ab"),
        ("x" * 128, "x" * 128),
        ("x" * 129, "x" * 127 + "…"),
    ],
    ids=["empty", "none", "plain", "newline", "at-limit", "over-limit"],
)
def test_client_label(given: str | None, recorded: str | None) -> None:
    assert client_label(given) == recorded


@pytest.mark.parametrize(
    ("argv", "agent"),
    [
        (["-c", "p.yaml", "--agent", "ci-bot", "--", "srv"], "ci-bot"),
        (["-c", "p.yaml", "--agent=alice", "--", "srv"], "alice"),
        (["-c", "p.yaml", "--", "srv"], None),
    ],
)
def test_the_fast_command_line_reads_agent(argv: list[str], agent: str | None) -> None:
    assert fast_proxy_args(argv) == ProxyArgs(config=Path("p.yaml"), command=("srv",), agent=agent)


@pytest.mark.parametrize("bad", ["", " alice", "a\x1bb", "x" * 129])
def test_a_bad_agent_goes_to_click_for_its_message(bad: str) -> None:
    assert fast_proxy_args(["-c", "p.yaml", "--agent", bad, "--", "srv"]) is None


COMMANDS = ApproverCommands("intercept approvals approve apr_1", "intercept approvals deny apr_1")


def webhook_record(agent: str | None, client: str | None) -> ApprovalRecord:
    return ApprovalRecord(
        id="apr_1", fingerprint="f", server="files", tool="deploy", args_hash="h", args_redacted="{}", rule="r",
        rule_digest="d", policy_revision="p", status="pending", timeout_s=60.0,
        created_at="2026-11-30T12:00:00.000000Z", expires_at="2026-11-30T12:01:00.000000Z", agent=agent, client=client,
    )  # fmt: skip


def test_the_webhook_names_agent_and_client() -> None:
    body = generic_body(webhook_record("alice", "Claude Code"), None, COMMANDS)
    assert (body["agent"], body["client"]) == ("alice", "Claude Code")
    slack = slack_body(webhook_record("alice", "Claude Code"), None, COMMANDS)
    assert "Agent: alice (client: Claude Code)" in slack["blocks"][0]["text"]["text"]
    assert "Agent" not in slack_body(webhook_record(None, None), None, COMMANDS)["blocks"][0]["text"]["text"]


def test_a_client_name_makes_no_slack_mention() -> None:
    slack = slack_body(webhook_record(None, "<!channel> <https://evil.example|Approve>"), None, COMMANDS)
    text = slack["blocks"][0]["text"]["text"]
    assert "<!" not in text and "<https://evil" not in text
    assert "Client: &lt;!channel&gt;" in text
