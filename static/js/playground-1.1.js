/* Gantry playground 1.1: sends the form's prompt to the gateway for each pane and streams
   the answer in, token by token. No build, no dependencies. Each pane gets a short-lived
   token for its own deployment from the portal (POST, CSRF), then talks to the gateway
   like any client. Model output is only ever set as text, never as HTML. The code to
   copy (curl, Python, JavaScript) follows the form: mode, system prompt, message and
   sampling settings, as the playground would send them. */
(function () {
  "use strict";

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  function firstMessage(body, fallback) {
    if (body && body.error && body.error.message) return body.error.message;
    if (body && typeof body === "object") {
      for (const key of Object.keys(body)) {
        const value = Array.isArray(body[key]) ? body[key][0] : body[key];
        if (typeof value === "string") return value;
      }
    }
    return fallback;
  }

  function numberField(form, name, integer) {
    const raw = form.elements[name].value.trim();
    if (raw === "") return undefined;
    const value = Number(raw);
    const input = form.elements[name];
    const bad =
      !Number.isFinite(value) ||
      (integer && !Number.isInteger(value)) ||
      (input.min !== "" && value < Number(input.min)) ||
      (input.max !== "" && value > Number(input.max));
    if (bad) {
      const range = input.min !== "" && input.max !== "" ? ` from ${input.min} to ${input.max}` : "";
      throw new Error(`${name} must be a ${integer ? "whole number" : "number"}${range}.`);
    }
    return value;
  }

  function readForm(form) {
    const params = {};
    for (const [name, integer] of [["temperature", false], ["top_p", false], ["max_tokens", true], ["seed", true]]) {
      const value = numberField(form, name, integer);
      if (value !== undefined) params[name] = value;
    }
    const stop = form.elements.stop.value;
    if (stop !== "") params.stop = [stop];
    const prompt = form.elements.prompt.value;
    if (!prompt.trim()) throw new Error("Write a message first.");
    return {
      mode: form.elements.mode.value,
      system: form.elements.system.value.trim(),
      prompt: prompt,
      params: params,
    };
  }

  function addTurn(pane, role, text) {
    const turn = document.createElement("div");
    turn.className = `turn turn-${role}`;
    const label = document.createElement("span");
    label.className = "turn-label";
    label.textContent = role;
    const body = document.createElement("span");
    body.className = "turn-text";
    body.dataset.testid = `${role}-text`;
    body.textContent = text;
    turn.append(label, body);
    const log = pane.querySelector("[data-role=conversation]");
    log.append(turn);
    log.scrollTop = log.scrollHeight;
    return body;
  }

  function show(pane, role, text) {
    const el = pane.querySelector(`[data-role=${role}]`);
    el.textContent = text;
    if (role === "error") el.hidden = !text;
  }

  async function mint(pane) {
    const response = await fetch(pane.dataset.mintUrl, {
      method: "POST",
      headers: {"X-CSRFToken": csrfToken()},
      credentials: "same-origin",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(firstMessage(body, `The portal refused a token (${response.status}).`));
    return body;
  }

  function waitingNote(pane, grant) {
    if (!grant.waking) return () => {};
    const until = Date.now() + grant.wake_estimate_s * 1000;
    const tick = () => {
      const left = Math.round((until - Date.now()) / 1000);
      show(pane, "status", left > 0 ? `waking, about ${left} s` : "waking, any moment now");
    };
    tick();
    const timer = setInterval(tick, 1000);
    return () => clearInterval(timer);
  }

  /* Reads server-sent events off a fetch body; calls onEvent with each parsed data object. */
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        let event;
        try {
          event = JSON.parse(data);
        } catch (e) {
          continue; /* a line that is not JSON carries nothing to show */
        }
        onEvent(event);
      }
    }
  }

  async function cost(pane, usage) {
    const url = `${pane.dataset.costUrl}?input_tokens=${usage.prompt_tokens}&output_tokens=${usage.completion_tokens}`;
    const response = await fetch(url, {credentials: "same-origin"});
    const body = await response.json().catch(() => ({}));
    return response.ok ? body.cost : "cost unknown";
  }

  async function run(pane, ask) {
    show(pane, "error", "");
    show(pane, "stats", "");
    const history = pane.history || (pane.history = []);
    const chat = ask.mode === "chat";
    addTurn(pane, "user", ask.prompt);
    const answer = addTurn(pane, "assistant", "");
    let stopWaiting = () => {};
    try {
      show(pane, "status", "connecting…");
      const grant = await mint(pane);
      stopWaiting = waitingNote(pane, grant);
      const body = Object.assign({model: grant.model, stream: true, stream_options: {include_usage: true}}, ask.params);
      if (chat) {
        body.messages = (ask.system ? [{role: "system", content: ask.system}] : [])
          .concat(history, [{role: "user", content: ask.prompt}]);
      } else {
        body.prompt = ask.prompt;
      }
      const started = performance.now();
      const headers = {"Authorization": `Bearer ${grant.token}`, "Content-Type": "application/json"};
      if (grant.waking) {
        // Wait for it instead of taking a 503: up to a few times its usual start-up.
        headers["X-Scale-Up-Timeout"] = String(Math.min(600, Math.max(60, grant.wake_estimate_s * 4)));
      }
      const response = await fetch(`${grant.base_url}/${chat ? "chat/completions" : "completions"}`, {
        method: "POST",
        headers: headers,
        body: JSON.stringify(body),
      });
      stopWaiting();
      if (!response.ok) {
        const refusal = await response.json().catch(() => ({}));
        throw new Error(firstMessage(refusal, `The gateway answered ${response.status}.`));
      }
      show(pane, "status", "streaming…");
      let first = null, last = null, counted = 0, usage = null, text = "";
      await readEvents(response, (event) => {
        if (event.error) throw new Error(firstMessage(event, "The engine broke off the answer."));
        if (event.usage) usage = event.usage;
        for (const choice of event.choices || []) {
          const piece = chat ? choice.delta && choice.delta.content : choice.text;
          if (!piece) continue;
          const now = performance.now();
          if (first === null) first = now;
          last = now;
          counted += 1;
          text += piece;
          answer.textContent = text;
        }
      });
      if (chat) history.push({role: "user", content: ask.prompt}, {role: "assistant", content: text});
      usage = usage || {prompt_tokens: 0, completion_tokens: counted};
      const ttft = first === null ? null : Math.round(first - started);
      const seconds = first !== null && last > first ? (last - first) / 1000 : null;
      const rate = seconds ? ((usage.completion_tokens - 1) / seconds).toFixed(1) : "—";
      const price = await cost(pane, usage);
      show(pane, "status", "");
      show(
        pane,
        "stats",
        `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens · ` +
          `TTFT ${ttft === null ? "—" : ttft + " ms"} · ${rate} tokens/s · ${price}`
      );
    } catch (error) {
      stopWaiting();
      show(pane, "status", "");
      show(pane, "error", error.message);
      if (!answer.textContent) answer.parentElement.remove();
    }
  }

  // The form as a request body, leniently: a field not (yet) valid is left out.
  function sampleRequest(form, model) {
    const chat = form.elements.mode.value === "chat";
    const body = {model: model};
    const prompt = form.elements.prompt.value.trim() ? form.elements.prompt.value : "Hello";
    if (chat) {
      const system = form.elements.system.value.trim();
      body.messages = (system ? [{role: "system", content: system}] : []).concat([{role: "user", content: prompt}]);
    } else {
      body.prompt = prompt;
    }
    for (const [name, integer] of [["max_tokens", true], ["temperature", false], ["top_p", false], ["seed", true]]) {
      try {
        const value = numberField(form, name, integer);
        if (value !== undefined) body[name] = value;
      } catch (e) {
        /* shown when sent; the sample leaves it out meanwhile */
      }
    }
    if (form.elements.stop.value !== "") body.stop = [form.elements.stop.value];
    return {chat: chat, body: body};
  }

  // Strings, numbers and lists or dicts of them: their JSON is a Python literal too.
  function pythonValue(value) {
    return JSON.stringify(value);
  }

  function renderCode(box, form) {
    const base = box.dataset.gateway;
    const {chat, body} = sampleRequest(form, box.dataset.model);
    const path = chat ? "chat/completions" : "completions";
    const streamed = Object.assign({}, body, {stream: true});
    const shellJson = JSON.stringify(streamed, null, 1).replace(/\n\s*/g, " ").replace(/'/g, "'\\''");
    box.querySelector("[data-testid=code-curl]").textContent =
      `curl ${base}/${path} \\\n` +
      `  -H "Authorization: Bearer $GANTRY_API_KEY" -H "Content-Type: application/json" \\\n` +
      `  -d '${shellJson}'`;
    const kwargs = Object.entries(body).map(([k, v]) => `    ${k}=${pythonValue(v)},`);
    box.querySelector("[data-testid=code-python]").textContent = [
      "import os",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${base}", api_key=os.environ["GANTRY_API_KEY"])`,
      `stream = client.${chat ? "chat.completions" : "completions"}.create(`,
      ...kwargs,
      "    stream=True,",
      ")",
      "for chunk in stream:",
      chat
        ? "    if chunk.choices and chunk.choices[0].delta.content:\n        print(chunk.choices[0].delta.content, end=\"\", flush=True)"
        : "    if chunk.choices:\n        print(chunk.choices[0].text, end=\"\", flush=True)",
    ].join("\n");
    box.querySelector("[data-testid=code-js]").textContent = [
      `const response = await fetch("${base}/${path}", {`,
      '  method: "POST",',
      '  headers: {"Authorization": `Bearer ${GANTRY_API_KEY}`, "Content-Type": "application/json"},',
      `  body: JSON.stringify(${JSON.stringify(body, null, 2).replace(/\n/g, "\n  ")}),`,
      "});",
      "const answer = await response.json();",
      `console.log(answer.choices[0].${chat ? "message.content" : "text"});`,
    ].join("\n");
  }

  function setUp(root) {
    const form = root.querySelector("[data-playground-form]");
    const code = root.querySelector("[data-code]");
    if (code) {
      const update = () => renderCode(code, form);
      form.addEventListener("input", update);
      form.addEventListener("change", update);
      update();
    }
    const panes = Array.from(root.querySelectorAll("[data-pane]"));
    const formError = form.querySelector("[data-form-error]");
    const send = form.querySelector("[type=submit]");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      let ask;
      try {
        ask = readForm(form);
      } catch (error) {
        formError.textContent = error.message;
        formError.hidden = false;
        return;
      }
      formError.hidden = true;
      form.elements.prompt.value = "";
      send.setAttribute("aria-busy", "true");
      send.disabled = true;
      try {
        await Promise.all(panes.map((pane) => run(pane, ask)));
      } finally {
        send.removeAttribute("aria-busy");
        send.disabled = false;
      }
    });
    form.querySelector("[data-action=clear]").addEventListener("click", () => {
      for (const pane of panes) {
        pane.history = [];
        pane.querySelector("[data-role=conversation]").textContent = "";
        show(pane, "stats", "");
        show(pane, "error", "");
      }
    });
  }

  function start() {
    document.querySelectorAll("[data-playground]").forEach(setUp);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
