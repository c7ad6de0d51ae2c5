// Getting the person's attention while they look elsewhere (issue 20).
//
// The page is kept open in a background tab. While the person is away from it (the tab hidden,
// or the window not focused), each message from the other person raises a count in the tab's
// title, `(3) Chat · K7M2QX`, and puts a dot on its icon; and, if they turned notifications on
// with the room's "Notify me" control, shows a notification. All of it goes when they look
// again. Their own messages, the room's event lines and the typing indicator count for nothing:
// main.js calls `peerMessage` only where a message from the peer is shown.
//
// Notifications are asked for only when the person presses the control, never on load (a
// prompt nobody asked for is the one everybody refuses). One notification stands for a burst:
// each carries the room as its tag, so the next replaces it instead of stacking up. In an end-
// to-end encrypted room it says only who wrote: a notification may show on a lock screen or be
// synced elsewhere, and the text of such a room stays on the page.
//
// Its elements are its own (the tab's title and icon, the control and its note); it reaches
// neither the socket nor the other modules' elements, and keeps no chat state but the count.

/** The tab's icon, and the same with a dot on it: there is something unread. */
const ICON = '/favicon.svg';
const ICON_UNREAD = '/favicon-unread.svg';
/** How much of a message a notification of a plain room shows. */
const NOTIFICATION_TEXT_CHARS = 120;
/** How long the note under the control stays. */
const NOTE_MS = 8000;
/** Where the person's choice to be notified (or not) is kept across visits. */
const NOTIFY_KEY = 'chat.notify';

/** What the note under the control says, by the control's state. */
const NOTE_TEXT = {
  on: 'You will be notified of new messages while this page is in the background.',
  off: 'Notifications are off.',
  denied:
    'This browser blocks notifications from this page: allow them in its site settings, ' +
    'then press the bell again.',
  unsupported: 'This browser cannot show notifications from this page.',
};

/** The control's tooltip, by its state. */
const BUTTON_TITLE = {
  on: 'Notifications are on: press to turn them off',
  off: 'Notify me of new messages while this page is in the background',
  denied: NOTE_TEXT.denied,
  unsupported: NOTE_TEXT.unsupported,
};

const $ = (id) => document.getElementById(id);

/** Messages from the peer since the person last looked. */
let unread = 0;
/** The notification on screen for the current burst, or null. */
let shown = null;
/** Set once this browser refused to construct a notification (Chrome on Android does). */
let constructorRefused = false;
/** Clears the note under the control. */
let noteTimer = null;

/** Binds the control and starts watching whether the person looks. */
export function init() {
  document.addEventListener('visibilitychange', onLookAgain);
  window.addEventListener('focus', onLookAgain);
  // The rest of the page sets the title (entering or leaving a room): keep the count in it.
  new MutationObserver(showCount).observe(document.querySelector('title'), {
    childList: true,
    characterData: true,
    subtree: true,
  });
  $('notify').addEventListener('click', onNotifyClick);
  showNotifyState();
}

/**
 * A message from the other person was shown: `room` is its room's code, `from` the sender's
 * name, `text` what they wrote (ignored when `encrypted`: an encrypted room's text never leaves
 * the page).
 */
export function peerMessage({ room, from, text, encrypted }) {
  if (looking()) return;
  unread += 1;
  showCount();
  notify(room, from, encrypted ? null : text);
}

/** Whether the person can see the page: the tab shown and its window focused. */
function looking() {
  return document.visibilityState === 'visible' && document.hasFocus();
}

/** The person looks again: the count, the dot and the notification go. */
function onLookAgain() {
  if (!looking()) return;
  shown?.close();
  shown = null;
  if (unread === 0) return;
  unread = 0;
  showCount();
}

/** Puts the count in the title (or takes it out) and the dot on the icon. */
function showCount() {
  const bare = document.title.replace(/^\(\d+\) /, '');
  const title = unread > 0 ? `(${unread}) ${bare}` : bare;
  // Only on a change: setting it would call this again through the observer.
  if (document.title !== title) document.title = title;
  const icon = document.querySelector('link[rel="icon"]');
  const href = unread > 0 ? ICON_UNREAD : ICON;
  if (icon.getAttribute('href') !== href) icon.setAttribute('href', href);
}

// ---------------------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------------------

/**
 * What notifications can do here: `'on'` (allowed and wanted), `'off'` (not asked yet, or
 * turned off), `'denied'` (the browser refuses them) or `'unsupported'`. `Notification` is
 * looked up each time, not once at load: a browser may add or lose it (and tests stub it).
 */
function notifyState() {
  if (!('Notification' in window) || constructorRefused) return 'unsupported';
  if (Notification.permission === 'denied') return 'denied';
  return Notification.permission === 'granted' && wanted() ? 'on' : 'off';
}

/** Whether the person wants notifications (the default, once they allowed them). */
function wanted() {
  try {
    return localStorage.getItem(NOTIFY_KEY) !== 'off';
  } catch {
    return true; // Storage blocked: the permission alone decides.
  }
}

function setWanted(yes) {
  try {
    localStorage.setItem(NOTIFY_KEY, yes ? 'on' : 'off');
  } catch {
    // Storage blocked: the choice lasts as long as the permission says so.
  }
}

/**
 * The bell: turns notifications on (asking the browser the first time) or off; where the
 * browser refuses or lacks them, it says so.
 */
async function onNotifyClick() {
  const before = notifyState();
  if (before === 'on') {
    setWanted(false);
  } else if (before === 'off') {
    setWanted(true);
    if (Notification.permission === 'default') {
      try {
        await Notification.requestPermission();
      } catch {
        // An old browser that only takes a callback, or one that refused: the state says.
      }
    }
  }
  showNotifyState();
  say(NOTE_TEXT[notifyState()]);
}

/** Shows on the control whether notifications are on, and whether they can be. */
function showNotifyState() {
  const state = notifyState();
  const button = $('notify');
  button.setAttribute('aria-pressed', String(state === 'on'));
  button.dataset.state = state;
  // Still pressable where it cannot work: pressing it says why (see `onNotifyClick`).
  if (state === 'denied' || state === 'unsupported') button.setAttribute('aria-disabled', 'true');
  else button.removeAttribute('aria-disabled');
  button.title = BUTTON_TITLE[state];
}

/** Says `text` in the note under the control, for a while. */
function say(text) {
  $('notify-note').textContent = text;
  clearTimeout(noteTimer);
  noteTimer = setTimeout(() => {
    $('notify-note').textContent = '';
  }, NOTE_MS);
}

/**
 * Shows a notification for a message from `from` in room `room`: with the start of `text`,
 * or, when `text` is null (an encrypted room), only who wrote. It replaces the one shown for
 * the burst so far (same tag), and a click on it brings the person to the tab.
 */
function notify(room, from, text) {
  if (notifyState() !== 'on') return;
  const title = text === null ? `New message from ${from}` : from;
  const options = { tag: `chat-${room}`, body: text === null ? '' : start(text), icon: '/icons/icon-192.png' };
  let notification;
  try {
    notification = new Notification(title, options);
  } catch {
    // Chrome on Android shows notifications only through a service worker, which this page
    // does not have: say so on the control rather than fail at every message.
    constructorRefused = true;
    showNotifyState();
    return;
  }
  notification.onclick = () => {
    window.focus();
    notification.close();
  };
  shown = notification;
}

/** The first NOTIFICATION_TEXT_CHARS characters of `text` on one line, "…" if cut. */
function start(text) {
  const line = text.replace(/\s+/g, ' ').trim();
  const chars = [...line]; // Characters, not UTF-16 units: never half an emoji.
  if (chars.length <= NOTIFICATION_TEXT_CHARS) return line;
  return `${chars.slice(0, NOTIFICATION_TEXT_CHARS - 1).join('')}…`;
}
