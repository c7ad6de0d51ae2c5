// The invite a phone can scan (issue 20): the waiting view's QR code of the invite link, and
// its "Share" button.
//
// The code is drawn here, in the page, as SVG: for an end-to-end encrypted room the link
// carries the room's key in its fragment, which the server must never see, so it could not
// draw it anyway. The encoder is Kazuhiko Arase's qrcode-generator, vendored (vendor/README.md).
// Dark modules on a light square with its quiet zone in either colour scheme: scanners want
// dark on light, and many do not read an inverted code.
//
// "Share" hands the link to the system's share sheet (the Web Share API, on phones): where a
// browser has none, the button stays hidden, and the "Copy link" beside the link does the job.
//
// Its elements are its own (the QR code's box and the Share button); views.js calls
// `showInviteLink` whenever it puts a room's invite link on the page.

import qrcode from './vendor/qrcode-generator.js';

/**
 * Error correction level M (15% of the code may be lost): a phone reads a code off a glossy
 * screen, at an angle. At this level a link with a key (about 85 bytes) fits version 6, 41
 * modules a side, which the stylesheet draws about 5 px each.
 */
const ERROR_CORRECTION = 'M';
/** The blank margin around the code, in modules: the standard asks for 4. */
const QUIET_ZONE_MODULES = 4;
const SVG = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

/** The link the QR code shows, which Share hands on. */
let link = '';
/** How a button says something for a moment ("Copied"): views.js's, handed over with the link. */
let flash = () => {};

/**
 * Draws `inviteLink` as a QR code in the invite panel and gets Share ready for it; `flashOn`
 * is how the page shows a word on a button for a moment, views.js's own.
 */
export function showInviteLink(inviteLink, flashOn) {
  flash = flashOn;
  if (inviteLink === link) return;
  link = inviteLink;
  $('invite-qr').replaceChildren(qrSvg(inviteLink));
  const share = $('share-link');
  share.hidden = typeof navigator.share !== 'function';
  if (!share.dataset.bound) {
    share.dataset.bound = 'true';
    share.addEventListener('click', onShareClick);
  }
}

/** The QR code of `text` as an SVG element, labelled for people who cannot see it. */
function qrSvg(text) {
  const qr = qrcode(0, ERROR_CORRECTION); // 0: the smallest version that holds the text.
  qr.addData(text, 'Byte');
  qr.make();
  const count = qr.getModuleCount();
  const side = count + 2 * QUIET_ZONE_MODULES;

  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${side} ${side}`);
  svg.setAttribute('class', 'invite__qr-code');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'QR code of the invite link: scan it with a phone’s camera to join');
  // Whole modules without anti-aliased seams between them.
  svg.setAttribute('shape-rendering', 'crispEdges');

  const background = document.createElementNS(SVG, 'rect');
  background.setAttribute('width', String(side));
  background.setAttribute('height', String(side));
  background.setAttribute('fill', '#ffffff');

  // One path for every dark module (a unit square each) keeps the element count small.
  const squares = [];
  for (let row = 0; row < count; row += 1) {
    for (let col = 0; col < count; col += 1) {
      if (qr.isDark(row, col)) {
        squares.push(`M${col + QUIET_ZONE_MODULES} ${row + QUIET_ZONE_MODULES}h1v1h-1z`);
      }
    }
  }
  const modules = document.createElementNS(SVG, 'path');
  modules.setAttribute('d', squares.join(''));
  modules.setAttribute('fill', '#000000');

  svg.append(background, modules);
  return svg;
}

/**
 * Opens the share sheet with the link. A person who closes it has decided (AbortError); a
 * browser that will not share after all gets the link copied instead.
 */
async function onShareClick(event) {
  const button = event.currentTarget;
  try {
    await navigator.share({ title: 'Chat', text: 'Join me in this chat room', url: link });
  } catch (error) {
    if (error?.name === 'AbortError') return;
    try {
      await navigator.clipboard.writeText(link);
      flash(button, 'Copied');
    } catch {
      flash(button, 'Use Copy link');
    }
  }
}
