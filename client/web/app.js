// The chatterbox page: one WebSocket, one message list, no framework, no build step.
//
// It talks to every stage of the workshop, so it assumes little about the frames it receives:
// lesson01 echoes and lesson02 relays whatever the page sent (there is no {"id"} frame yet),
// lesson03 on stamps each message with its author's id, lesson05 adds channel notices, and the
// finished server numbers the feed's messages (seq), replays its history and resumes after a
// reconnect. The page learns which from the frames themselves.
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
// State. `ids` keeps every id this tab was given: after a reconnect the server hands out a new
// one, and a message scheduled under the old one is still ours. They are kept for the tab
// (sessionStorage), so that after a reload our messages in the history are still shown as ours.

const IDS_KEY = "chatterbox.ids";
const IDS_KEPT = 50;

function rememberedIds() {
  try {
    const ids = JSON.parse(sessionStorage.getItem(IDS_KEY) ?? "[]");
    return Array.isArray(ids) ? ids.filter((id) => typeof id === "string") : [];
  } catch {
    return []; // storage disabled, or not our JSON: start afresh
  }
}

function rememberId(id) {
  state.ids.add(id);
  try {
    sessionStorage.setItem(IDS_KEY, JSON.stringify([...state.ids].slice(-IDS_KEPT)));
  } catch {
    // Storage disabled or full: the ids still hold until the page is closed.
  }
}

const state = {
  server: chosenServer(),
  socket: null,
  id: null,
  ids: new Set(rememberedIds()),
  channel: "feed",
  // Whether the server delivers /schedule messages later (lesson04 on): null until the page
  // knows. It learns it from what comes back (see receive and submit); lessons 01-03 pass a
  // scheduled message on at once, to the others only.
  schedules: null,
  // This connection has sent a frame only the finished server sends ({"me"}, presence, ...):
  // it may be sent what only the finished server reads (receipts, typing).
  finished: false,
  attempt: 0, // reconnect attempts since the last good connection
  retryTimer: null,
  wasConnected: false,
};

// The feed's numbering, which only the finished server has: each of its chat frames carries
// `seq`, the message's number in its channel (the feed, or a random room, which has numbers of
// its own and no history). Lessons send no seq, and to a server that sends none the page never
// sends `?after=` nor asks for earlier messages.
const feed = {
  numbered: false, // a chat frame here had a numeric seq: the finished server
  lastSeq: null, // the newest feed seq seen: a reconnect resumes with ?after=lastSeq
  shown: new Set(), // the feed seqs on screen, so that none is shown twice
  oldest: null, // the smallest of them: earlier pages go above it
  resuming: false, // this connection asked ?after=: its history is what the page missed
  divider: null, // this connection's history on join goes above this line
  // Our own feed messages, shown when sent. The server does not send them back, except in the
  // history of a resumed connection: then the message on screen takes its seq instead of
  // being shown twice.
  unconfirmed: [],
  loadingBefore: null, // the `before` of the page of earlier messages on its way
  noneEarlier: false, // the server said there are no earlier ones
};

// Our messages sent with "ack": true whose receipt ({"sent": {"seq"}}) has not come yet, oldest
// first: {item, channel}. The receipt gives the seq that {"delete": SEQ} takes back.
const awaitingReceipts = [];

// The channel the page is in, as `{"deleted"}` names it: "feed", "random", or a named room's
// name (those two are not room names). null while offline.
function channelKey() {
  return state.channel === "room" ? room.name : state.channel;
}

// Whether the server is the finished one, which reads receipts and typing. (A lesson relays
// what it does not know to the others, or echoes it back.)
function knowsFinishedServer() {
  return feed.numbered || state.finished || accountsPossible();
}

const EARLIER_PAGE = 50; // messages asked for per page of earlier ones
const UNCONFIRMED_KEPT = 100;

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

// One chat message as a list item. `own` decides the side; `author` may be absent (lessons
// 01-02); `name` is an account's display name (the finished server), shown instead of the id;
// `at` is when the server accepted it (the finished server), else it is now.
function messageItem({ author, name, kind, body, own, at }) {
  const item = element("li", `message ${own ? "own" : "other"}`);
  if (typeof author === "string") {
    item.dataset.author = author;
    item.style.setProperty("--author", colourFor(author));
  }
  const meta = element("div", "meta");
  // An account's display name when the frame carries one, else the short id. A name is typed
  // by a person: it goes in with textContent like everything else.
  const named = !own && typeof name === "string" && name.trim() !== "";
  const label = own ? "you" : named ? name : shortId(author);
  const who = element("span", named ? "author named" : "author", label);
  if (typeof author === "string") who.title = author;
  // Accounts have pictures; guests (no name) do not. Ours is the account's, when logged in.
  const picture = avatarsPossible() ? avatarImage(own ? account.me?.id : named ? author : null) : null;
  if (picture) meta.append(picture);
  meta.append(who, timeElement(at));
  const bubble = element("div", kind === "emoji" ? "bubble emoji" : "bubble", body);
  item.append(meta, bubble);
  return item;
}

// "14:05", or "Dec 1 14:05" for a message from another day (history can be old).
function timeElement(at) {
  const parsed = typeof at === "string" ? new Date(at) : null;
  const when = parsed && !Number.isNaN(parsed.getTime()) ? parsed : new Date();
  const clock = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const today = when.toDateString() === new Date().toDateString();
  const day = when.toLocaleDateString([], { month: "short", day: "numeric" });
  const node = element("time", "", today ? clock : `${day} ${clock}`);
  node.dateTime = when.toISOString();
  return node;
}

// Our own message, shown as it is sent. In the feed it waits for its seq (see `feed`). With
// `acked`, the server was asked for a receipt with its seq (see receiveSent).
function showOwn(kind, body, acked) {
  const item = messageItem({ author: state.id ?? undefined, kind, body, own: true });
  append(item);
  if (acked) awaitingReceipts.push({ item, channel: channelKey() });
  if (state.channel !== "feed") return;
  feed.unconfirmed.push({ kind, body, item });
  if (feed.unconfirmed.length > UNCONFIRMED_KEPT) feed.unconfirmed.shift();
}

// A message's number in the channel it was said in, and the control that takes it back when it
// is ours. The number means something only while the page is in that channel (see
// enterChannel): `{"delete": SEQ}` is about the channel the sender is in now.
function numberItem(item, seq, channel) {
  item.dataset.seq = String(seq);
  item.dataset.channel = channel;
  if (!item.classList.contains("own") || item.querySelector("button.delete")) return;
  const control = element("button", "delete quiet", "Delete");
  control.type = "button";
  control.title = "Take this message back, for everyone";
  control.hidden = channel !== channelKey();
  control.addEventListener("click", () => {
    if (item.dataset.channel !== channelKey() || !item.dataset.seq) return;
    if (!sendFrame({ delete: Number(item.dataset.seq) })) showHelp("Not connected, so nothing was deleted.");
  });
  item.querySelector(".meta")?.append(control);
}

// A message no longer numbered: another server, or a room the page has left.
function unnumber(item) {
  delete item.dataset.seq;
  delete item.dataset.channel;
  item.querySelector("button.delete")?.remove();
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
  enterChannel(null, null);
  delete document.body.dataset.id;
  delete document.body.dataset.account;
  setChannel("—");
  setStatus(stateName, text);
  updateEarlier();
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
    delete document.body.dataset.account; // a guest, unless a {"me"} frame follows
    rememberId(frame.id);
    document.body.dataset.id = frame.id;
    setStatus("open", `connected as ${shortId(frame.id)}`);
    return;
  }
  // The finished server's profile of the account this connection speaks as, right after the id.
  if (isObject(frame.me) && Object.keys(frame).length === 1) {
    state.finished = true;
    return receiveMe(frame.me);
  }
  if ("error" in frame) {
    // A refused message gets no receipt: the receipts still awaited cannot be matched any more.
    awaitingReceipts.length = 0;
    room.rejoin = null; // if it was about going back into a room, that room is gone
    const error = frame.error;
    const reason = typeof error === "string" ? error : error?.message ?? JSON.stringify(error);
    return showError(`Server: ${reason}`);
  }
  if (frame.channel === "room" && frame.status === "joined" && typeof frame.room === "string") {
    return receiveRoomJoined(frame);
  }
  if (typeof frame.channel === "string" && typeof frame.status === "string") {
    const notice = NOTICES[`${frame.channel}/${frame.status}`];
    const [label, line] = notice ?? [frame.channel, `${frame.channel}: ${frame.status}`];
    room.rejoin = null; // the user went elsewhere
    enterChannel(frame.channel, null);
    setChannel(label);
    keepingBottom(updateEarlier);
    return showSystem(line, frame.status);
  }
  // The finished server's presence, typing, "who" and deletions (docs/PROTOCOL.md). Each is
  // one key alone; a lesson never sends them.
  const only = (key) => isObject(frame[key]) && Object.keys(frame).length === 1;
  const finishedOnly = {
    presence: receivePresence,
    deleted: receiveDeleted,
    who: receiveWho,
    typing: receiveTyping,
    sent: receiveSent,
    profile: receiveProfile,
  };
  for (const [key, handle] of Object.entries(finishedOnly)) {
    if (!only(key)) continue;
    state.finished = true;
    return handle(frame[key]);
  }
  // {"history": {...}} alone is the finished server's, and only a server that numbers its
  // messages is listened to (lessons 01-02 relay whatever a client sent).
  if (feed.numbered && isObject(frame.history) && Object.keys(frame).length === 1) {
    return receiveHistory(frame.history);
  }
  const data = frame.data ?? {};
  const own = state.ids.has(frame.author); // false when there is no author (lessons 01-02)
  // From lesson03 on the server never sends our own message back live, except a scheduled one
  // when it is due. A message that still carries its schedule was passed on without one.
  if (own && frame.history !== true) state.schedules = true;
  if (data.schedule !== undefined && state.schedules === null) {
    state.schedules = false;
    showSystem("This server passed a /schedule message on at once: it does not know schedules.", "no-schedules");
  }
  const chat = chatContent(frame);
  if (!chat) return showRaw(text); // some other object: show it rather than drop it
  receiveChat(frame, { ...chat, author: frame.author, name: frame.name, own, at: frame.at });
}

// Who a presence or "who" entry is: the display name, else the short id.
function personLabel(person) {
  const name = isObject(person) && typeof person.name === "string" ? person.name.trim() : "";
  return name !== "" ? name : shortId(person?.id);
}

// {"joined": person} or {"left": person}: a quiet line, and the room's member list.
function receivePresence(presence) {
  if (isPerson(presence.joined)) {
    room.members.set(presence.joined.id, presence.joined);
    showMembers();
    return showSystem(`${personLabel(presence.joined)} joined`, "presence");
  }
  if (isPerson(presence.left)) {
    room.members.delete(presence.left.id);
    stopTyping(presence.left.id);
    showMembers();
    return showSystem(`${personLabel(presence.left)} left`, "presence");
  }
}

function isPerson(person) {
  return isObject(person) && typeof person.id === "string";
}

// {"channel", "seq"}: a message taken back by its author, gone for everyone in that channel.
// Our own copy is found by the seq its receipt gave it.
function receiveDeleted(deleted) {
  if (deleted.channel !== channelKey() || !Number.isSafeInteger(deleted.seq)) return;
  const selector = `#messages li[data-channel="${CSS.escape(deleted.channel)}"][data-seq="${deleted.seq}"]`;
  for (const item of document.querySelectorAll(selector)) {
    item.classList.add("deleted");
    item.querySelector("button.delete")?.remove();
    const bubble = item.querySelector(".bubble");
    if (bubble) {
      bubble.className = "bubble";
      bubble.textContent = "message deleted";
    }
  }
}

// {"seq"}: the receipt for the oldest of our messages still waiting for one. The server answers
// in the order it got them.
function receiveSent(sent) {
  const waiting = awaitingReceipts.shift();
  if (!waiting || !Number.isSafeInteger(sent.seq) || !waiting.item.isConnected) return;
  if (waiting.channel !== channelKey()) return;
  if (waiting.channel !== "feed") return numberItem(waiting.item, sent.seq, waiting.channel);
  // In the feed the seq is the resume point too; and the message no longer waits for a
  // history to number it.
  if (feed.shown.has(sent.seq)) return;
  feed.unconfirmed = feed.unconfirmed.filter((entry) => entry.item !== waiting.item);
  markSeq(waiting.item, sent.seq);
  keepingBottom(updateEarlier);
}

// {"count", "members"}: who is here.
function receiveWho(who) {
  const members = Array.isArray(who.members) ? who.members.map(personLabel) : [];
  const count = Number.isSafeInteger(who.count) ? who.count : members.length;
  showSystem(`${count} here${members.length ? `: ${members.join(", ")}` : ""}`, "who");
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

// {kind, body} of a text or emoji frame; null for anything else.
function chatContent(frame) {
  const data = isObject(frame.data) ? frame.data : {};
  if (frame.type === "text" && typeof data.text === "string") return { kind: "text", body: data.text };
  if (frame.type === "emoji" && typeof data.emoji === "string") return { kind: "emoji", body: data.emoji };
  return null;
}

// A chat frame's seq, when it has one (the finished server's).
function seqOf(frame) {
  return Number.isSafeInteger(frame.seq) && frame.seq > 0 ? frame.seq : null;
}

// ---------------------------------------------------------------------------------------------
// History: what the finished server said before we came, what we missed while offline, and
// earlier pages. See docs/PROTOCOL.md, "Chat frames, history and resume".

function receiveChat(frame, message) {
  const seq = seqOf(frame);
  // Whoever was typing has said it.
  if (typeof frame.author === "string" && frame.history !== true) stopTyping(frame.author);
  if (seq === null) {
    // A chat frame without a seq: a lesson, maybe in place of the finished server since the
    // last connection. Never send it ?after= or history requests.
    if (feed.numbered) forgetFeed();
    return append(messageItem(message));
  }
  feed.numbered = true;
  state.schedules = true; // the finished server delivers /schedule messages
  // A room's seqs are its own: only the feed's count for resuming and earlier pages.
  if (state.channel !== "feed") {
    const item = messageItem(message);
    numberItem(item, seq, channelKey());
    return append(item);
  }
  if (feed.shown.has(seq)) return; // on screen already
  const history = frame.history === true;
  if (history && message.own && confirmOwn(message, seq)) return;
  const item = messageItem(message);
  markSeq(item, seq);
  // On a resumed connection the history is what we missed: it follows what is on screen.
  if (history && !feed.resuming) insertAboveDivider(item);
  else append(item);
  keepingBottom(updateEarlier);
}

function markSeq(item, seq) {
  numberItem(item, seq, "feed");
  feed.shown.add(seq);
  if (feed.lastSeq === null || seq > feed.lastSeq) feed.lastSeq = seq;
  if (feed.oldest === null || seq < feed.oldest) feed.oldest = seq;
}

// One of our messages came back in the history: the copy on screen since we sent it takes
// its seq. The first unconfirmed message with the same content is the one: ours are numbered
// in the order we sent them.
function confirmOwn({ kind, body }, seq) {
  const index = feed.unconfirmed.findIndex((sent) => sent.kind === kind && sent.body === body);
  if (index === -1) return false;
  const [sent] = feed.unconfirmed.splice(index, 1);
  if (!sent.item.isConnected) return false;
  markSeq(sent.item, seq);
  return true;
}

// The history a connection gets on joining goes above a quiet line; live messages below it.
function insertAboveDivider(item) {
  if (!feed.divider?.isConnected) {
    feed.divider = element("li", "divider", "↑ earlier messages");
    feed.divider.setAttribute("role", "separator");
    append(feed.divider);
  }
  keepingBottom(() => list.insertBefore(item, feed.divider));
}

// The seqs on screen mean nothing any more: another server, a lesson, or a wiped store.
function forgetFeed() {
  for (const item of list.querySelectorAll('li[data-channel="feed"]')) unnumber(item);
  feed.numbered = false;
  feed.lastSeq = null;
  feed.shown.clear();
  feed.oldest = null;
  feed.resuming = false;
  feed.divider = null;
  feed.unconfirmed = [];
  feed.loadingBefore = null;
  feed.noneEarlier = false;
  keepingBottom(updateEarlier);
}

function receiveHistory(history) {
  if (Array.isArray(history.messages)) return receiveEarlier(history);
  if (history.reset === true && state.channel === "room") {
    // The same about a room we came back into (with "after"): its numbers on screen are stale.
    for (const item of list.querySelectorAll(`li[data-channel="${CSS.escape(room.name)}"]`)) unnumber(item);
    return showSystem("This room's history was reset. Its latest messages follow.", "history-reset");
  }
  if (history.reset === true) {
    // The server has fewer messages than we saw: its numbers start again. What follows is its
    // latest messages, as a newcomer gets them.
    forgetFeed();
    feed.numbered = true;
    return showSystem("The server's history was reset. Its latest messages follow.", "history-reset");
  }
  if (Number.isSafeInteger(history.first)) {
    const count = Number.isSafeInteger(history.skipped)
      ? `${history.skipped} message${history.skipped === 1 ? "" : "s"}`
      : "Some messages";
    return showSystem(`${count} you missed while offline are not shown.`, "history-skipped");
  }
  showRaw(JSON.stringify({ history }));
}

// ---------------------------------------------------------------------------------------------
// Earlier messages: asked for when the list is scrolled to the top (or with the button there),
// one page at a time, until the server says there are none.

const earlier = $("earlier");
const earlierButton = $("earlier-load");
const earlierNote = $("earlier-note");

function canLoadEarlier() {
  return (
    feed.numbered &&
    state.channel === "feed" &&
    feed.oldest !== null &&
    feed.oldest > 1 &&
    !feed.noneEarlier &&
    feed.loadingBefore === null
  );
}

function loadEarlier() {
  if (!canLoadEarlier()) return;
  const before = feed.oldest;
  if (!sendFrame({ history: { before, limit: EARLIER_PAGE } })) return;
  feed.loadingBefore = before;
  keepingPlace(updateEarlier);
}

function receiveEarlier({ before, messages, more }) {
  if (before !== feed.loadingBefore) return; // not the page we asked for
  feed.loadingBefore = null;
  feed.noneEarlier = more !== true;
  const anchor = list.querySelector(`li[data-channel="feed"][data-seq="${before}"]`);
  keepingPlace(() => {
    for (const frame of anchor ? messages : []) {
      const chat = isObject(frame) ? chatContent(frame) : null;
      const seq = chat ? seqOf(frame) : null;
      if (seq === null || feed.shown.has(seq)) continue;
      const own = state.ids.has(frame.author);
      const item = messageItem({ ...chat, author: frame.author, name: frame.name, own, at: frame.at });
      markSeq(item, seq);
      list.insertBefore(item, anchor); // oldest first, each right above the one we had
    }
    updateEarlier();
  });
}

// Runs `change` above what the reader is looking at, which stays where it is on screen.
function keepingPlace(change) {
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  change();
  scroller.scrollTop = scroller.scrollHeight - fromBottom;
}

// The line above the messages: a button while earlier messages may exist, else what is so.
function updateEarlier() {
  earlier.hidden = !(feed.numbered && state.channel === "feed" && feed.oldest !== null);
  const loading = feed.loadingBefore !== null;
  const none = feed.noneEarlier || feed.oldest === 1;
  earlier.dataset.state = loading ? "loading" : none ? "none" : "more";
  earlierButton.hidden = loading || none;
  earlierNote.textContent = loading ? "Loading earlier messages…" : none ? "No earlier messages." : "";
}

scroller.addEventListener("scroll", () => {
  if (scroller.scrollTop <= 2) loadEarlier();
});
earlierButton.addEventListener("click", loadEarlier);

// ---------------------------------------------------------------------------------------------
// The connection, with reconnects: 0.5 s, 1 s, 2 s, ... up to 10 s between attempts.

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  setStatus("connecting", state.attempt ? `reconnecting (attempt ${state.attempt + 1})…` : "connecting…");
  let socket;
  try {
    socket = new WebSocket(socketAddress());
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
    state.finished = false; // maybe a lesson now, on the same address
    awaitingReceipts.length = 0;
    enterChannel("feed", null); // a new connection starts in the feed
    setChannel("feed");
    rejoinRoom();
    setStatus("open", "connected");
    feed.divider = null; // this connection's history, if any, gets a line of its own
    feed.loadingBefore = null; // a page asked for on the last connection will not come
    keepingBottom(updateEarlier);
  });
  socket.addEventListener("message", (event) => {
    if (state.socket !== socket) return;
    if (typeof event.data === "string") receive(event.data);
  });
  socket.addEventListener("close", () => {
    if (state.socket !== socket) return; // a socket we replaced on purpose
    state.socket = null;
    rememberRoomToRejoin();
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

// The server's address, with ?after= the last feed seq seen when the server numbers its
// messages: it then sends what we missed, instead of its latest messages.
function socketAddress() {
  feed.resuming = feed.numbered && feed.lastSeq !== null;
  if (!feed.resuming) return state.server;
  const url = new URL(state.server);
  url.searchParams.set("after", String(feed.lastSeq));
  return url.href;
}

function reconnectTo(server) {
  forgetFeed(); // another server's numbers are not this one's
  room.rejoin = null; // nor its rooms
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
    // The finished server gives a receipt with the message's seq, for deleting it later.
    const acked = knowsFinishedServer();
    if (acked) frame.ack = true;
    // The server does not send our own message back (lesson01 does: it echoes everything).
    shown = () => showOwn("text", value, acked);
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
  sendTyping();
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
    const acked = knowsFinishedServer();
    if (sendFrame({ ...chatFrame("emoji", { emoji }), ...(acked ? { ack: true } : {}) })) {
      showOwn("emoji", emoji, acked);
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

// ---------------------------------------------------------------------------------------------
// Accounts: sign up, log in, log out, the display name and the password (docs/PROTOCOL.md,
// "Accounts"). Only the finished server has them, and only when it serves this page: the
// session cookie belongs to its origin. Served apart (`cargo run -p client`) or talking to
// another server, the page shows none of this.

const account = {
  available: false, // GET /api/me answered 200 or 401 on our own origin
  me: null, // the profile while logged in
};

function accountsPossible() {
  const meta = document.querySelector('meta[name="chatterbox-default-server"]')?.content ?? "";
  if (meta !== "same-origin" || !location.host) return false;
  try {
    return new URL(state.server).host === location.host;
  } catch {
    return false;
  }
}

// One call to the account API: the JSON answer (null for 204), or an Error with the server's
// `{"error"}` text. A Blob (a picture) is sent as it is, anything else as JSON.
async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body instanceof Blob) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let answer = null;
  if (response.status !== 204) {
    try {
      answer = await response.json();
    } catch {
      answer = null;
    }
  }
  if (!response.ok) {
    const reason = typeof answer?.error === "string" ? answer.error : `${response.status} ${response.statusText}`;
    const error = new Error(reason);
    error.status = response.status;
    throw error;
  }
  return answer;
}

async function checkAccounts() {
  if (!accountsPossible()) return showAccount();
  try {
    showMe(await api("GET", "/api/me"));
    account.available = true;
  } catch (error) {
    account.available = error.status === 401; // 404: a server without accounts
    showMe(null);
  }
}

function isProfile(profile) {
  return isObject(profile) && typeof profile.id === "string" && typeof profile.name === "string";
}

function showMe(profile) {
  account.me = isProfile(profile) ? profile : null;
  showAccount();
}

// The header's account corner: the display name (or "guest") and the buttons that fit.
function showAccount() {
  $("account").hidden = !account.available;
  const me = account.me;
  const name = $("me-name");
  name.textContent = me ? me.name : "guest";
  name.title = me ? `@${me.username ?? ""}` : "Not logged in: chatting as a guest";
  if (me) delete name.dataset.guest;
  else name.dataset.guest = "";
  $("login-toggle").hidden = Boolean(me);
  $("profile-toggle").hidden = !me;
  $("logout").hidden = !me;
  $("rooms-toggle").hidden = !account.available;
  showRooms(); // only accounts create rooms
  if (me) closePanel("login");
  else closePanel("profile");
}

// The {"me"} frame: this connection speaks as that account.
function receiveMe(profile) {
  if (!isProfile(profile)) return showRaw(JSON.stringify({ me: profile }));
  document.body.dataset.account = profile.id;
  if (account.available) showMe(profile);
  setStatus("open", `connected as ${profile.name}`);
}

// After logging in or out: a new connection, which the server gives to the account (or to a
// new guest). It resumes after the last seq seen, so nothing on screen is shown twice.
function reopen() {
  rememberRoomToRejoin();
  clearTimeout(state.retryTimer);
  state.attempt = 0;
  state.wasConnected = false; // no "Reconnected." line: the user asked for it
  const old = state.socket;
  state.socket = null; // its close event is now ignored
  old?.close();
  connect();
}

function togglePanel(id, open) {
  const panel = $(id);
  panel.hidden = !open;
  $(`${id}-toggle`).setAttribute("aria-expanded", String(open));
  for (const message of panel.querySelectorAll(".form-error, .form-note")) message.textContent = "";
}

function closePanel(id) {
  togglePanel(id, false);
}

// Runs an API call for a form: its error goes in the form's error line, as text.
async function attempt(errorLine, call) {
  errorLine.textContent = "";
  for (const note of document.querySelectorAll(".form-note")) note.textContent = "";
  try {
    await call();
  } catch (error) {
    errorLine.textContent = error.message;
  }
}

async function logIn(path) {
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  await attempt($("login-error"), async () => {
    const profile = await api("POST", path, { username, password });
    $("login-password").value = "";
    showMe(profile);
    reopen();
  });
}

$("login-toggle").addEventListener("click", () => {
  togglePanel("login", $("login").hidden);
  if (!$("login").hidden) $("login-username").focus();
});
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  logIn("/api/login");
});
$("signup").addEventListener("click", () => logIn("/api/signup"));

$("logout").addEventListener("click", async () => {
  try {
    await api("POST", "/api/logout");
  } catch (error) {
    return showError(`Log out: ${error.message}`);
  }
  // The account's id stays among ours: what this tab said as the account is still shown as
  // ours, and comes back in a history as the copy already on screen rather than a second one.
  showMe(null);
  reopen();
});

$("profile-toggle").addEventListener("click", () => {
  togglePanel("profile", $("profile").hidden);
  if ($("profile").hidden) return;
  showCurrentAvatar();
  $("profile-name").value = account.me?.name ?? "";
  $("profile-name").focus();
});
$("name-form").addEventListener("submit", (event) => {
  event.preventDefault();
  attempt($("profile-error"), async () => {
    showMe(await api("PATCH", "/api/me", { name: $("profile-name").value }));
    $("profile-note").textContent = "Name saved.";
  });
});
$("password-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = { current: $("password-current").value, new: $("password-new").value };
  attempt($("profile-error"), async () => {
    await api("POST", "/api/me/password", body);
    $("password-current").value = "";
    $("password-new").value = "";
    $("profile-note").textContent = "Password changed.";
  });
});

// ---------------------------------------------------------------------------------------------
// Profile pictures (docs/PROTOCOL.md, "Pictures"): /avatars/ID on the server that serves the
// page, beside accounts' messages and in the member list. Guests have none. The picture of an
// id is fetched again (with ?v=, past the browser's copy) when it may have changed.

const avatarVersions = new Map(); // id → the ?v= of its newest picture
const ACCOUNT_ID = /^[0-9a-f]{32}$/;

// Pictures come from the page's own origin only (the CSP says so), that is from the finished
// server that serves it.
function avatarsPossible() {
  return accountsPossible();
}

function avatarUrl(id) {
  const version = avatarVersions.get(id);
  return version ? `/avatars/${id}?v=${version}` : `/avatars/${id}`;
}

// A small picture of account `id`; null for anything that is not an id (32 hex digits).
function avatarImage(id) {
  if (!ACCOUNT_ID.test(id ?? "")) return null;
  const image = element("img", "avatar");
  image.alt = ""; // the name stands beside it
  image.dataset.avatarId = id;
  image.addEventListener("error", () => {
    image.hidden = true; // no such account (any more): no broken-image icon
  });
  image.src = avatarUrl(id);
  return image;
}

function reloadAvatars(id) {
  if (!ACCOUNT_ID.test(id)) return;
  avatarVersions.set(id, Date.now());
  for (const image of document.querySelectorAll(`img[data-avatar-id="${id}"]`)) {
    image.hidden = false;
    image.src = avatarUrl(id);
  }
}

function showCurrentAvatar() {
  const current = $("avatar-current");
  const id = account.me?.id;
  current.hidden = !id;
  if (!id) return;
  current.dataset.avatarId = id;
  current.src = avatarUrl(id);
}

// The picture chosen is shown before it is sent, from the file itself (an object URL, freed
// when another is chosen or it is sent).
const avatarFile = $("avatar-file");
const avatarPreview = $("avatar-preview");
let previewUrl = null;

function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = file ? URL.createObjectURL(file) : null;
  avatarPreview.hidden = !previewUrl;
  if (previewUrl) avatarPreview.src = previewUrl;
  else avatarPreview.removeAttribute("src");
  $("avatar-upload").disabled = !file;
}

avatarFile.addEventListener("change", () => showPreview(avatarFile.files[0] ?? null));
$("avatar-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = avatarFile.files[0];
  if (!file) return;
  attempt($("profile-error"), async () => {
    try {
      await api("POST", "/api/me/avatar", file);
    } catch (error) {
      // fetch's own failure (the server closed the connection mid-upload) says only "Failed
      // to fetch": say what was being done.
      if (error.status === undefined) throw new Error(`The picture could not be sent: ${error.message}`);
      throw error;
    }
    avatarFile.value = "";
    showPreview(null);
    reloadAvatars(account.me?.id ?? "");
    $("profile-note").textContent = "Picture saved.";
  });
});

// {"id", "name", "avatar"}: an account in our channel changed its name or picture. Its entries
// in the member list, its typing line and the names on its messages follow, and its pictures
// are fetched again.
function receiveProfile(profile) {
  if (!isPerson(profile) || typeof profile.name !== "string") return;
  const { id, name } = profile;
  if (room.members.has(id)) {
    room.members.set(id, { ...room.members.get(id), name });
    showMembers();
  }
  const typist = typing.people.get(id);
  if (typist) {
    typist.person = { ...typist.person, name };
    showTyping();
  }
  for (const label of list.querySelectorAll(`li.message.other[data-author="${CSS.escape(id)}"] .author.named`)) {
    label.textContent = name;
  }
  if (account.me?.id === id) showMe({ ...account.me, name }); // our other tab renamed us
  reloadAvatars(id);
}

// ---------------------------------------------------------------------------------------------
// Named rooms (docs/PROTOCOL.md, "Named rooms" and "Presence"): the list from GET /api/rooms,
// creating one (accounts only), joining one, and the room's members and who is typing. Like
// accounts, only when the finished server serves the page.

const rooms = {
  list: [], // the server's list, as last fetched
  asked: 0, // how many times it was asked for: only the newest answer is shown
};
const room = {
  name: null, // the named room the page is in
  members: new Map(), // id → {id, name?}, in the order they came
  // The room to go back into when the next connection opens: the page was in it when its
  // connection ended (a restart, lost Wi-Fi, logging in or out), and the server puts every
  // new connection in the feed.
  rejoin: null,
};

function isRoom(value) {
  return isObject(value) && typeof value.name === "string";
}

async function refreshRooms() {
  if (!accountsPossible()) return;
  const listed = $("room-list");
  rooms.asked += 1;
  const asked = rooms.asked;
  listed.dataset.state = "loading";
  try {
    const list = await api("GET", "/api/rooms");
    if (asked !== rooms.asked) return; // a newer answer is on its way
    rooms.list = Array.isArray(list) ? list.filter(isRoom) : [];
    $("rooms-error").textContent = "";
  } catch (error) {
    if (asked === rooms.asked) $("rooms-error").textContent = `The rooms could not be listed: ${error.message}`;
    return;
  } finally {
    if (asked === rooms.asked) listed.dataset.state = "ready";
  }
  showRooms();
  showRoom();
}

function showRooms() {
  const listed = $("room-list");
  listed.replaceChildren();
  if (rooms.list.length === 0) listed.append(element("li", "room-empty", "No rooms yet."));
  for (const { name, topic, online } of rooms.list) {
    const entry = element("li", name === room.name ? "room current" : "room");
    const join = element("button", "room-join", `#${name}`);
    join.type = "button";
    join.dataset.room = name;
    join.title = `Join #${name}`;
    join.addEventListener("click", () => joinRoom(name));
    const count = Number.isSafeInteger(online) ? online : 0;
    entry.append(join, element("span", "room-topic", typeof topic === "string" ? topic : ""));
    entry.append(element("span", "room-online", `${count} online`));
    listed.append(entry);
  }
  $("room-create").hidden = !account.me;
  $("rooms-note").hidden = Boolean(account.me);
}

function joinRoom(name) {
  if (!sendFrame({ channel: "room", room: name })) return showHelp("Not connected, so no room was joined.");
  closePanel("rooms");
}

function rememberRoomToRejoin() {
  if (room.name !== null) room.rejoin = room.name;
}

// On a new connection: back into the room, asking only for what came after the last message
// of it on screen (as ?after= does for the feed). Its messages on screen keep their numbers
// meanwhile (see enterChannel), so that Delete and deletions still find them.
function rejoinRoom() {
  const name = room.rejoin;
  if (name === null) return;
  const numbered = list.querySelectorAll(`li[data-channel="${CSS.escape(name)}"]`);
  const seqs = [...numbered].map((item) => Number(item.dataset.seq));
  const frame = { channel: "room", room: name };
  if (seqs.length > 0) frame.after = Math.max(...seqs);
  if (!sendFrame(frame)) room.rejoin = null;
}

// The page moves to another channel ("feed", "random", "room" with `roomName`, or null when
// offline). Numbers of the channel left mean nothing any more, except the feed's, which the page
// keeps for resuming; who was typing there is forgotten.
function enterChannel(channel, roomName) {
  const before = channelKey();
  state.channel = channel;
  room.name = channel === "room" ? roomName : null;
  const now = channelKey();
  if (now !== before) {
    room.members.clear();
    clearTyping();
    for (const item of list.querySelectorAll("li[data-channel]")) {
      const kept = ["feed", now, room.rejoin];
      if (!kept.includes(item.dataset.channel)) unnumber(item);
    }
  }
  for (const control of list.querySelectorAll("button.delete")) {
    control.hidden = control.closest("li")?.dataset.channel !== now;
  }
  showRoom();
}

// {"channel": "room", "room", "status": "joined", "members"}: in a named room now.
function receiveRoomJoined(frame) {
  state.finished = true;
  room.rejoin = null;
  enterChannel("room", frame.room);
  room.members.clear();
  for (const person of Array.isArray(frame.members) ? frame.members : []) {
    if (isPerson(person)) room.members.set(person.id, person);
  }
  setChannel(`#${frame.room}`);
  keepingBottom(updateEarlier);
  showMembers();
  showSystem(`You are in #${frame.room}.`, "room-joined");
  refreshRooms(); // its topic, and the online counts, which just changed
}

// The bar above the messages: the room's name, topic and members.
function showRoom() {
  const bar = $("room-bar");
  keepingBottom(() => {
    bar.hidden = room.name === null;
  });
  if (room.name === null) return;
  $("room-title").textContent = `#${room.name}`;
  const topic = rooms.list.find((listed) => listed.name === room.name)?.topic;
  $("room-topic-shown").textContent = typeof topic === "string" ? topic : "";
  for (const entry of $("room-list").querySelectorAll("li.room")) {
    entry.classList.toggle("current", entry.querySelector("button")?.dataset.room === room.name);
  }
}

function showMembers() {
  const members = $("members");
  members.replaceChildren();
  for (const person of room.members.values()) {
    const entry = element("li", "member");
    entry.dataset.id = person.id;
    const named = typeof person.name === "string" && person.name.trim() !== "";
    const picture = named && avatarsPossible() ? avatarImage(person.id) : null;
    if (picture) entry.append(picture);
    const label = state.ids.has(person.id) ? `${personLabel(person)} (you)` : personLabel(person);
    entry.append(element("span", "member-name", label));
    members.append(entry);
  }
  members.dataset.count = String(room.members.size);
}

$("rooms-toggle").addEventListener("click", () => {
  const open = $("rooms").hidden;
  togglePanel("rooms", open);
  if (open) refreshRooms();
});
$("rooms-refresh").addEventListener("click", refreshRooms);
$("room-create").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = { name: $("room-name").value.trim(), topic: $("room-topic").value };
  attempt($("rooms-error"), async () => {
    const created = await api("POST", "/api/rooms", body);
    $("room-name").value = "";
    $("room-topic").value = "";
    await refreshRooms();
    if (isRoom(created)) joinRoom(created.name);
  });
});

// "NAME is typing…": {"typing": true} goes out while we type in a room or a pair (the server
// passes on one per 2 s per person, so sending more is waste); one received shows for 3 s, or
// until that person's message comes.

const TYPING_SENT_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 3000;
const typing = {
  lastSent: 0,
  people: new Map(), // id → {person, timer}
};

function sendTyping() {
  if (state.channel !== "room" && state.channel !== "random") return;
  if (!knowsFinishedServer() || input.value.trim() === "") return;
  const now = Date.now();
  if (now - typing.lastSent < TYPING_SENT_EVERY_MS) return;
  if (sendFrame({ typing: true })) typing.lastSent = now;
}

function receiveTyping(person) {
  if (!isPerson(person) || state.ids.has(person.id)) return;
  clearTimeout(typing.people.get(person.id)?.timer);
  const timer = setTimeout(() => stopTyping(person.id), TYPING_SHOWN_MS);
  typing.people.set(person.id, { person, timer });
  showTyping();
}

function stopTyping(id) {
  const typist = typing.people.get(id);
  if (!typist) return;
  clearTimeout(typist.timer);
  typing.people.delete(id);
  showTyping();
}

function clearTyping() {
  for (const id of [...typing.people.keys()]) stopTyping(id);
}

function showTyping() {
  const names = [...typing.people.values()].map(({ person }) => personLabel(person));
  const line =
    names.length === 0
      ? ""
      : names.length === 1
        ? `${names[0]} is typing…`
        : `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
  keepingBottom(() => {
    $("typing").textContent = line;
  });
}

// For the browser tests, and for the curious in the developer console.
window.chatterbox = { parseSchedule, colourFor, sendFrame, state, feed, account, room, rooms, typing };

checkAccounts();
connect();
autosize();
input.focus();
