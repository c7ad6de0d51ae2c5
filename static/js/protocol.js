// What the page knows of the chat protocol (docs/protocol.md): its limits, the close codes it
// acts on, and a sentence for people for each of its error codes.
//
// Constants only: no state, no page, no socket. The connection, the views and the wiring
// (main.js) all import from here, so each fact is written once.

/** Longest chat message the server accepts, in characters (Unicode scalar values). */
export const MAX_MESSAGE_CHARS = 4096;

/** Close code of a connection whose session another connection resumed (another tab). */
export const CLOSE_RESUMED_ELSEWHERE = 4000;
/** Close code "policy violation": the server closed us on purpose (no name for too long). */
export const CLOSE_POLICY = 1008;
/**
 * Close code "service restart": this server node is being restarted (a rolling upgrade) while
 * the others carry on, so reconnecting at once finds one of them, which resumes the session.
 */
export const CLOSE_SERVICE_RESTART = 1012;

/** A sentence for people for every error code of the protocol. */
export const ERROR_TEXT = {
  INVALID_MESSAGE: 'The server did not understand that request. Reloading the page should fix it.',
  USERNAME_REQUIRED: 'Choose a name first.',
  INVALID_USERNAME: 'A name has 1 to 32 characters, at least one of them visible, and no control or text-direction characters.',
  USERNAME_TAKEN: 'The person in that room already uses this name. Change your name and try again.',
  ALREADY_IN_ROOM: 'You are already in a room. Leave it first.',
  NOT_IN_ROOM: 'You are not in a room any more.',
  INVALID_ROOM_CODE: 'A room code is 6 letters and digits, like K7M2QX.',
  ROOM_NOT_FOUND: 'There is no room with that code. It closes when everyone has left.',
  ROOM_FULL: 'That room already has two people in it.',
  EMPTY_MESSAGE: 'Write something before sending.',
  MESSAGE_TOO_LONG: `That message is too long: the limit is ${MAX_MESSAGE_CHARS} characters.`,
  ENCRYPTION_REQUIRED: 'This room is end-to-end encrypted, and this page does not have its key: open the invite link to read and write here.',
  INTERNAL_ERROR: 'Something went wrong on the server. Please try again.',
  RATE_LIMITED: 'That was too fast for the server. Wait a moment and try again.',
  UNAVAILABLE: 'The server is briefly unavailable. Try again in a moment.',
};
