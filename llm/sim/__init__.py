"""The simulated LLM provider: `sim/<name>` models, answered in-process.

DSPex ships this as a real (clearly labelled) model: it is the default LM of a fresh install,
the target of load and fault tests and the demo model. It never calls out anywhere. It reads the
prompts DSPy 3.4.1 sends (ChatAdapter and JSONAdapter, also XMLAdapter: field lists with types,
the `[[ ## field ## ]]` template, the instructions, few-shot demos as earlier user/assistant
turns, the current inputs) and answers every requested output field in the requested type, in
the adapter's format (a JSON object whenever a `response_format` asks for JSON).

Answers come only from what the prompt contains, so instructions and demos change them and an
optimizer measurably improves a program:

* exact-match memory: a demo whose inputs equal the current inputs is answered with its outputs;
* `Literal` fields: every allowed label is scored by token overlap between the current inputs and
  the label's name, the words the instructions associate with it ("billing: invoices, refunds")
  and the words of the demos labelled with it;
* `str` fields: extractive answers from context passages (a short span when demo answers are
  short, formatting words such as "lowercase" or "one word" in the instructions are obeyed),
  otherwise a deterministic text derived from the inputs;
* numbers: a safely evaluated arithmetic expression from the inputs, a number in the inputs, or a
  hash-derived number; `bool`: demos when present, else a keyword heuristic.

The model name `sim/concise` is the same model tuned for brevity: when neither instructions nor
demos ask for a length, its free-text answers are short spans (at most three words) instead of
whole sentences. Nothing else differs between `sim/<name>` models (their answers are seeded by
the name, so tie-breaks and temperature noise differ too). This is what makes a program's
`model` variable worth searching (DSPex's variable search optimizer).

Everything is deterministic: the same request (model, messages, temperature, seed) gives the
same reply; tie-breaks and temperature noise come from a sha256 of the canonical request.

The package is split by concern, each step feeding the next:

* `llm.sim.prompts` parses the prompt (output fields and types, instructions, tools, demos, inputs);
* `llm.sim.answering` decides every field's value from it;
* `llm.sim.rendering` writes the reply in the adapter's format;
* `llm.sim.chat` composes the three (`simulate_chat`), `llm.sim.embeddings` embeds texts;
* `llm.sim.engines` holds the in-process DSPy engines (`SimEngine`, `sim_lm`);
* `llm.sim.server` serves all of it over OpenAI-compatible HTTP, with the fault injection of
  `llm.sim.faults` (latency, 429 with Retry-After, 5xx, timeouts, malformed replies);
* `llm.sim.text` holds the text and number helpers they share.

No Django import here: the server and the DSPy engines use the simulator in any process.

In-process use with DSPy 3.4.1::

    lm = dspy.LM("sim/default", engine=SimEngine(), async_engine=AsyncSimEngine(),
                 num_retries=0, cache=False)

`dspy.LM` accepts the `sim/` prefix as is: with a custom engine DSPy never routes the model
string (no lm15 or LiteLLM lookup), so no registration is needed. A custom engine owns its
connection, so `api_key`/`api_base` must not be passed to `dspy.LM`.
"""

from llm.sim.chat import SimReply, simulate_chat
from llm.sim.embeddings import simulate_embeddings
from llm.sim.engines import AsyncSimEngine, SimEngine, sim_lm
from llm.sim.text import count_tokens, safe_eval

__all__ = [
    "AsyncSimEngine",
    "SimEngine",
    "SimReply",
    "count_tokens",
    "safe_eval",
    "sim_lm",
    "simulate_chat",
    "simulate_embeddings",
]
