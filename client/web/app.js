// The chatterbox page: one WebSocket, one message list, no framework, no build step.
//
// It talks to every stage of the workshop, so it assumes little about the frames it receives:
// lesson01 echoes and lesson02 relays whatever the page sent (there is no {"id"} frame yet),
// lesson03 on stamps each message with its author's id, lesson05 adds channel notices.
"use strict";

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// The /schedule grammar, a line-for-line twin of client/src/schedule.rs: same rules, same error
// messages. A browser test holds both to one table, so change them together.

const SCHEDULE_EXAMPLE = "/schedule minutes 5 seconds 30 message time for coffee";
const UNITS = { hours: 3600n, minutes: 60n, seconds: 1n };
const U64_MAX = 2n ** 64n - 1n;

// `null` when `input` is no /schedule command (plain chat), else `{ok: {schedule, text}}` or
// `{error}`. A unit's value is a Number, or a string of digits when it is too big for a
// Number to hold exactly (the protocol accepts both).
function parseSchedule(input) {
  if (!input.startsWith("/schedule")) return null;
  let rest = input.slice("/schedule".length);
  if (!(rest === "" || rest.startsWith(" "))) return null; // "/scheduler" is not our command

  // Counts are BigInts while parsing: a u64 does not fit a Number, and the Rust side checks
  // that the total delay fits one.
  const counts = {};
  const fail = (error) => ({ error });
  for (;;) {
    const noUnit = Object.keys(counts).length === 0;
    const next = nextWord(rest);
    if (!next) return fail(noUnit ? "give at least one of hours, minutes, seconds" : "end with: message TEXT");
    const [word, after] = next;
    if (word === "message") {
      if (noUnit) return fail("give at least one of hours, minutes, seconds");
      // The text is everything after "message ", spaces and all.
      const text = after.startsWith(" ") ? after.slice(1) : after;
      if (/^\p{White_Space}*$/u.test(text)) return fail("the message after 'message' is empty");
      let total = 0n;
      for (const [unit, count] of Object.entries(counts)) total += count * UNITS[unit];
      if (total > U64_MAX) return fail("that delay is too long");
      const schedule = {};
      for (const [unit, count] of Object.entries(counts)) {
        schedule[unit] = count <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(count) : String(count);
      }
      return { ok: { schedule, text } };
    }
    if (!Object.hasOwn(UNITS, word)) return fail(`unknown unit '${word}' (use hours, minutes or seconds)`);
    if (Object.hasOwn(counts, word)) return fail(`'${word}' is given twice`);
    const value = nextWord(after);
    if (!value) return fail(`'${word}' needs a number after it`);
    // Only ASCII digits, like the Rust side: no sign, no decimals, nothing over 64 bits.
    const count = /^[0-9]+$/.test(value[0]) ? BigInt(value[0]) : null;
    if (count === null || count > U64_MAX) return fail(`'${value[0]}' after '${word}' is not a whole number`);
    counts[word] = count;
    rest = value[1];
  }
}

// Splits off the next space-separated word: " hours 1 ..." → ["hours", " 1 ..."]. Only spaces
// separate words (not tabs or newlines), as in the Rust parser.
function nextWord(text) {
  text = text.replace(/^ +/, "");
  if (text === "") return null;
  const end = text.indexOf(" ");
  return end === -1 ? [text, ""] : [text.slice(0, end), text.slice(end)];
}

// ---------------------------------------------------------------------------------------------
// Where to connect: ?server=, else what the settings field remembered, else the default that the
// Rust side wrote into the <meta> tag.

const STORAGE_KEY = "chatterbox.server";

function defaultServer() {
  const meta = document.querySelector('meta[name="chatterbox-default-server"]')?.content ?? "";
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const port = /^port:(\d+)$/.exec(meta);
  if (port) return `${scheme}://${location.hostname || "localhost"}:${port[1]}/`;
  // "same-origin", and the fallback when the page is opened as a file or the tag is missing.
  return location.host ? `${scheme}://${location.host}/` : "ws://localhost:8000/";
}

function chosenServer() {
  const fromQuery = new URLSearchParams(location.search).get("server");
  if (fromQuery) {
    localStorage.setItem(STORAGE_KEY, fromQuery);
    return fromQuery;
  }
  return localStorage.getItem(STORAGE_KEY) || defaultServer();
}

// ---------------------------------------------------------------------------------------------
// State. `ids` keeps every id this page was given: after a reconnect the server hands out a
// new one, and a message scheduled under the old one is still ours.

const state = {
  server: chosenServer(),
  socket: null,
  id: null,
  ids: new Set(),
  channel: "feed",
  // Whether the server delivers /schedule messages later (lesson04 on): null until the page
  // knows. It learns it from what comes back (see receive and submit); lessons 01-03 pass a
  // scheduled message on at once, to the others only.
  schedules: null,
  attempt: 0, // reconnect attempts since the last good connection
  retryTimer: null,
  wasConnected: false,
};

// ---------------------------------------------------------------------------------------------
// Rendering. Everything a peer sends goes in with textContent, never innerHTML: a message such
// as <img src=x onerror=...> is shown as those characters and never runs.

const list = $("messages");
const scroller = $("scroller");

// Runs `change` (a new message, the help above the box appearing, ...) and follows the
// conversation if the reader was at the bottom: the newest message stays in sight.
function keepingBottom(change) {
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  change();
  if (atBottom) scroller.scrollTop = scroller.scrollHeight;
}

function append(item) {
  keepingBottom(() => list.append(item));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A stable colour per author: the same id gives the same hue on every page and every visit.
function colourFor(id) {
  let hash = 2166136261; // FNV-1a, 32 bits
  for (const char of String(id)) {
    hash ^= char.codePointAt(0);
    hash = Math.imul(hash, 16777619) >>> 0;
  }
  return `hsl(${hash % 360} 65% 42%)`;
}

function shortId(id) {
  return typeof id === "string" && id !== "" ? id.slice(0, 8) : "someone";
}

// One chat message. `own` decides the side; `author` may be absent (lessons 01-02).
function showMessage({ author, kind, body, own }) {
  const item = element("li", `message ${own ? "own" : "other"}`);
  if (typeof author === "string") {
    item.dataset.author = author;
    item.style.setProperty("--author", colourFor(author));
  }
  const meta = element("div", "meta");
  meta.append(element("span", "author", own ? "you" : shortId(author)));
  meta.append(element("time", "", new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  const bubble = element("div", kind === "emoji" ? "bubble emoji" : "bubble", body);
  item.append(meta, bubble);
  append(item);
}

// A line from the page or the server about the conversation itself, not part of it.
function showSystem(text, status) {
  const item = element("li", "system", text);
  if (status) item.dataset.status = status;
  append(item);
}

// A frame that is not a chat object: lessons 01-02 with a raw tool on the other end, say.
function showRaw(text) {
  const item = element("li", "message other raw");
  item.append(element("div", "meta", "raw frame"), element("div", "bubble", text));
  append(item);
}

// An error box, closed with ×; `action` ({label, run}) adds a button that offers the way out.
function showError(text, action) {
  const box = element("div", "error");
  box.append(element("span", "", text));
  if (action) {
    const button = element("button", "action", action.label);
    button.type = "button";
    button.addEventListener("click", () => {
      box.remove();
      action.run();
    });
    box.append(button);
  }
  const close = element("button", "quiet", "×");
  close.type = "button";
  close.title = "Dismiss";
  close.addEventListener("click", () => box.remove());
  box.append(close);
  $("errors").append(box);
}

function setStatus(stateName, text) {
  $("status").dataset.state = stateName;
  $("status-text").textContent = text;
  $("status").title = state.server;
}

function setChannel(label) {
  $("channel").textContent = label;
}

// Offline, the page is in no channel and has no id: the header says so, whatever it said before.
function showOffline(stateName, text) {
  state.id = null;
  state.channel = null;
  delete document.body.dataset.id;
  setChannel("—");
  setStatus(stateName, text);
}

// A connection error. When the address is the user's own (from ⚙ or ?server=, remembered
// across reloads), the error itself offers the way back to the default.
function showConnectError(text) {
  const custom = state.server !== defaultServer();
  showError(text, custom ? { label: `Use default (${defaultServer()})`, run: useDefault } : undefined);
}

// ---------------------------------------------------------------------------------------------
// Incoming frames.

const NOTICES = {
  "random/waiting": ["random · waiting", "Waiting for someone to join you in a random room…"],
  "random/paired": ["random · paired", "Paired with a stranger: say hi!"],
  "random/partner_left": ["random · waiting", "Your partner left. Waiting for the next one…"],
  "feed/joined": ["feed", "You are back in the feed."],
};

function receive(text) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    return showRaw(text);
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame)) return showRaw(text);

  if (typeof frame.id === "string" && Object.keys(frame).length === 1) {
    state.id = frame.id;
    state.ids.add(frame.id);
    document.body.dataset.id = frame.id;
    setStatus("open", `connected as ${shortId(frame.id)}`);
    return;
  }
  if ("error" in frame) {
    const error = frame.error;
    const reason = typeof error === "string" ? error : error?.message ?? JSON.stringify(error);
    return showError(`Server: ${reason}`);
  }
  if (typeof frame.channel === "string" && typeof frame.status === "string") {
    const notice = NOTICES[`${frame.channel}/${frame.status}`];
    const [label, line] = notice ?? [frame.channel, `${frame.channel}: ${frame.status}`];
    state.channel = frame.channel;
    setChannel(label);
    return showSystem(line, frame.status);
  }
  const data = frame.data ?? {};
  const own = state.ids.has(frame.author); // false when there is no author (lessons 01-02)
  // From lesson03 on the server never sends our own message back, except a scheduled one when
  // it is due. A message that still carries its schedule was passed on without one.
  if (own) state.schedules = true;
  if (data.schedule !== undefined && state.schedules === null) {
    state.schedules = false;
    showSystem("This server passed a /schedule message on at once: it does not know schedules.", "no-schedules");
  }
  if (frame.type === "text" && typeof data.text === "string") {
    return showMessage({ author: frame.author, kind: "text", body: data.text, own });
  }
  if (frame.type === "emoji" && typeof data.emoji === "string") {
    return showMessage({ author: frame.author, kind: "emoji", body: data.emoji, own });
  }
  showRaw(text); // some other object: show it rather than drop it
}

// ---------------------------------------------------------------------------------------------
// The connection, with reconnects: 0.5 s, 1 s, 2 s, ... up to 10 s between attempts.

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  setStatus("connecting", state.attempt ? `reconnecting (attempt ${state.attempt + 1})…` : "connecting…");
  let socket;
  try {
    socket = new WebSocket(state.server);
  } catch (error) {
    // A malformed address throws at once instead of failing later.
    showOffline("closed", "bad server address");
    showConnectError(`Cannot connect to ${state.server}: ${error.message}`);
    return;
  }
  state.socket = socket;

  socket.addEventListener("open", () => {
    if (state.socket !== socket) return;
    if (state.wasConnected) showSystem("Reconnected.", "reconnected");
    state.wasConnected = true;
    state.attempt = 0;
    // Lessons 01-02 never send an id; the page works without one.
    state.id = null;
    state.schedules = null; // maybe another stage now: learn it again
    state.channel = "feed"; // a new connection starts in the feed
    setChannel("feed");
    setStatus("open", "connected");
  });
  socket.addEventListener("message", (event) => {
    if (state.socket !== socket) return;
    if (typeof event.data === "string") receive(event.data);
  });
  socket.addEventListener("close", () => {
    if (state.socket !== socket) return; // a socket we replaced on purpose
    state.socket = null;
    if (state.attempt === 0 && state.wasConnected) {
      showSystem("Connection lost. Reconnecting…", "disconnected");
    }
    if (state.attempt === 0 && !state.wasConnected && state.server !== defaultServer()) {
      showConnectError(`Cannot reach ${state.server}; the page keeps trying.`);
    }
    const delay = Math.min(10_000, 500 * 2 ** state.attempt);
    state.attempt += 1;
    showOffline("closed", `offline · retrying in ${Math.round(delay / 100) / 10} s`);
    state.retryTimer = setTimeout(connect, delay);
  });
}

function reconnectTo(server) {
  state.server = server;
  state.attempt = 0;
  state.wasConnected = false;
  const old = state.socket;
  state.socket = null; // its close event is now ignored
  old?.close();
  connect();
}

function sendFrame(frame) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return false;
  state.socket.send(JSON.stringify(frame));
  return true;
}

// A chat message, with our id as author when we have one (the server overwrites it anyway).
function chatFrame(type, data) {
  return state.id ? { author: state.id, type, data } : { type, data };
}

// ---------------------------------------------------------------------------------------------
// The composer.

const input = $("input");
const help = $("input-help");

function showHelp(text) {
  keepingBottom(() => {
    help.textContent = text;
    help.hidden = false;
  });
}

function hideHelp() {
  keepingBottom(() => {
    help.hidden = true;
    help.textContent = "";
  });
}

function submit() {
  const value = input.value;
  if (value.trim() === "") return;

  let frame;
  let shown = null; // what to show locally once sent
  const scheduled = parseSchedule(value);
  if (scheduled?.error) {
    return showHelp(`${scheduled.error}. Example: ${SCHEDULE_EXAMPLE}`);
  } else if (scheduled && (state.schedules === false || (state.socket?.readyState === WebSocket.OPEN && !state.id))) {
    // No id: lesson01 or lesson02, which know no schedules either.
    return showHelp("This server does not know /schedule (lesson04 on does): nothing was sent.");
  } else if (scheduled) {
    frame = chatFrame("text", scheduled.ok);
    // The server delivers a scheduled message to its sender too, so it is shown on arrival.
    const { schedule, text } = scheduled.ok;
    const delay = Object.entries(schedule)
      .map(([unit, n]) => `${n} ${String(n) === "1" ? unit.slice(0, -1) : unit}`) // 1 hour, 2 hours
      .join(" ");
    shown = () => {
      if (state.schedules) return showSystem(`Scheduled in ${delay}: “${text}”`, "scheduled");
      showSystem(`Scheduled in ${delay}, if this server knows schedules (lesson04 on): “${text}”`, "scheduled");
      checkScheduleCameBack(schedule, text);
    };
  } else if (value.trim() === "/random" || value.trim() === "/feed") {
    frame = { channel: value.trim().slice(1) };
  } else {
    frame = chatFrame("text", { text: value });
    // The server does not send our own message back (lesson01 does: it echoes everything).
    shown = () => showMessage({ author: state.id ?? undefined, kind: "text", body: value, own: true });
  }

  if (!sendFrame(frame)) {
    return showHelp("Not connected, so nothing was sent. Your message is still here.");
  }
  shown?.();
  hideHelp();
  input.value = "";
  autosize();
}

// The first scheduled message on a server the page does not know yet: if it has not come back
// a second after it was due (for delays of up to a minute), the server passed it on at once.
function checkScheduleCameBack(schedule, text) {
  const seconds = Object.entries(schedule).reduce((total, [unit, n]) => total + Number(UNITS[unit]) * Number(n), 0);
  if (seconds > 60) return;
  const socket = state.socket;
  setTimeout(() => {
    if (state.socket !== socket || state.schedules !== null) return;
    state.schedules = false;
    showSystem(`“${text}” did not come back: this server does not know /schedule, so the others got it at once (lessons 01–03).`, "no-schedules");
  }, (seconds + 1) * 1000);
}

// The box grows with its lines up to 160 px, then scrolls.
function autosize() {
  input.style.height = "auto";
  const border = input.offsetHeight - input.clientHeight; // scrollHeight leaves it out
  input.style.height = `${Math.min(input.scrollHeight + border, 160)}px`;
  input.style.overflowY = input.scrollHeight > 160 ? "auto" : "hidden";
}

input.addEventListener("keydown", (event) => {
  // isComposing: Enter that confirms an IME composition (Korean, Japanese, ...) must not send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  }
});
input.addEventListener("input", () => {
  autosize();
  if (!help.hidden && parseSchedule(input.value)?.error === undefined) hideHelp();
});
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
  input.focus();
});

// ---------------------------------------------------------------------------------------------
// Buttons, emoji picker, settings.

function switchChannel(channel) {
  if (!sendFrame({ channel })) showHelp("Not connected, so the channel was not changed.");
}
$("random").addEventListener("click", () => switchChannel("random"));
$("feed").addEventListener("click", () => switchChannel("feed"));

const EMOJI = ["😋", "😀", "😂", "😍", "😎", "🤔", "😭", "😡", "👍", "👎", "👏", "🙏", "🎉", "❤️", "🔥", "🍕"];
const picker = $("emoji-picker");
for (const emoji of EMOJI) {
  const button = element("button", "quiet", emoji);
  button.type = "button";
  button.addEventListener("click", () => {
    if (sendFrame(chatFrame("emoji", { emoji }))) {
      showMessage({ author: state.id ?? undefined, kind: "emoji", body: emoji, own: true });
    } else {
      showHelp("Not connected, so nothing was sent.");
    }
    togglePicker(false);
    input.focus();
  });
  picker.append(button);
}
function togglePicker(open = picker.hidden) {
  keepingBottom(() => {
    picker.hidden = !open;
  });
  $("emoji-toggle").setAttribute("aria-expanded", String(open));
}
$("emoji-toggle").addEventListener("click", () => togglePicker());

const settings = $("settings");
$("settings-toggle").addEventListener("click", () => {
  settings.hidden = !settings.hidden;
  $("settings-toggle").setAttribute("aria-expanded", String(!settings.hidden));
  $("server-url").value = state.server;
  if (!settings.hidden) $("server-url").focus();
});
settings.addEventListener("submit", (event) => {
  event.preventDefault();
  const server = $("server-url").value.trim();
  if (!server) return;
  localStorage.setItem(STORAGE_KEY, server);
  settings.hidden = true;
  reconnectTo(server);
});
function useDefault() {
  localStorage.removeItem(STORAGE_KEY);
  $("server-url").value = defaultServer();
  settings.hidden = true;
  reconnectTo(defaultServer());
}
$("server-reset").addEventListener("click", useDefault);

// For the browser tests, and for the curious in the developer console.
window.chatterbox = { parseSchedule, colourFor, state };

connect();
autosize();
input.focus();
