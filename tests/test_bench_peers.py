"""bench/peers.py sends the peer what DSPex's program sends, and sets the peer up as it says.

Not timed: the benchmark's figures are printed by running it, never asserted here.
"""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from bench import peers

ROOT = Path(__file__).resolve().parent.parent


def execute(api, program, question: str) -> dict:
    response = api.post(
        f"/api/v1/programs/{program.id}/execute/", peers.dspex_body(question, cache=False), format="json"
    )
    assert response.status_code == 200, response.json()
    return response.json()


@pytest.mark.django_db
def test_the_proxy_is_sent_the_messages_dspex_sends_for_the_same_question(api, make_program):
    program = make_program(pipeline={"signature": "question -> answer"})
    template = peers.program_messages(execute(api, program, peers.CACHED_QUESTION))
    other = 'What is "6 * 7", in words?'  # quotes: the swap works on JSON-escaped text

    sent = peers.program_messages(execute(api, program, other))

    assert peers.proxy_body(template, peers.CACHED_QUESTION)["messages"] == template
    assert peers.proxy_body(template, other)["messages"] == sent
    assert other in sent[-1]["content"]


def test_each_side_bypasses_its_own_cache_only_in_the_uncached_figures():
    template = [{"role": "user", "content": f"question: {peers.CACHED_QUESTION}"}]
    assert peers.dspex_body("q", cache=True) == {"input": {"question": "q"}, "wait": True}
    assert peers.dspex_body("q", cache=False)["cache"] is False
    assert "cache" not in peers.proxy_body(template, "q", cache=True)
    assert peers.proxy_body(template, "q", cache=False)["cache"] == {"no-cache": True, "no-store": True}
    assert peers.proxy_body(template, "q")["model"] == peers.PROXY_MODEL


def test_a_template_without_the_question_exactly_once_is_refused():
    with pytest.raises(ValueError, match="2 times"):
        peers.proxy_body([{"role": "user", "content": peers.CACHED_QUESTION * 2}], "q")


def test_the_proxy_config_is_one_model_at_simlm_and_a_redis_cache_of_its_own():
    config = peers.litellm_config("http://127.0.0.1:9999/v1", "gpt-4o-mini", redis_port=6400)

    assert yaml.safe_load(json.dumps(config)) == config  # written as JSON, read as YAML by the proxy
    assert config["model_list"] == [
        {
            "model_name": "sim-qa",
            "litellm_params": {
                "model": "openai/gpt-4o-mini",
                "api_base": "http://127.0.0.1:9999/v1",
                "api_key": peers.SIM_KEY,
            },
        }
    ]
    assert config["litellm_settings"] == {
        "cache": True,
        "cache_params": {"type": "redis", "host": "127.0.0.1", "port": 6400, "db": peers.LITELLM_REDIS_DB},
    }
    assert peers.LITELLM_REDIS_DB != 0  # DSPex's LLM cache is db 0 of the same redis-server
    assert config["router_settings"] == {"num_retries": 0}
    assert "database" not in json.dumps(config).lower()
    assert peers.litellm_config("http://127.0.0.1:9999/v1", "m")["litellm_settings"] == {}


def test_the_proxy_runs_offline_without_our_database_redis_keys_or_code():
    ours = {
        "PATH": "/usr/bin",
        "DATABASE_URL": "postgres://localhost/dspex",
        "REDIS_URL": "redis://localhost:6379/0",
        "OPENAI_API_KEY": "sk-real",
        "DSPEX_LM_API_KEY": "sk-real",
        "PYTHONPATH": str(ROOT),
    }
    env = peers.litellm_env(ours)

    assert env["PATH"] == "/usr/bin"
    assert not set(env) & {"DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "DSPEX_LM_API_KEY", "PYTHONPATH"}
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["LITELLM_TELEMETRY_DISABLED"] == "True"
    assert env["LITELLM_LOG"] == "ERROR"


def test_the_wrk_script_reads_the_body_and_header_the_benchmark_hands_it():
    script = peers.WRK_SCRIPT.read_text()
    assert 'os.getenv("WRK_BODY_FILE")' in script and 'os.getenv("WRK_AUTHORIZATION")' in script
    assert 'wrk.method = "POST"' in script


def test_make_peers_env_installs_the_proxy_into_its_own_virtualenv_only():
    # `make -n` prints the recipe without running it.
    recipe = subprocess.run(
        ["make", "-n", "-B", "peers-env"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    installs = [line for line in recipe.splitlines() if "pip install" in line]
    assert any('"litellm[proxy]==' in line for line in installs), recipe
    assert all(line.startswith(".venv-peers/bin/python -m pip") for line in installs), recipe
    assert ".venv/" not in recipe and "-e ." not in recipe
    assert "litellm[proxy]" not in (ROOT / "pyproject.toml").read_text()
    assert ".venv-peers/" in (ROOT / ".gitignore").read_text().splitlines()
