//! The requests whose replies can be large (sync, history, list_conversations,
//! subscribe_presence): each reply is cut to [`REPLY_BYTES_MAX`] bytes, with `has_more` and a
//! cursor to continue; the user's conversation index is read in pages, so nothing is ever
//! left out of a listing however many conversations a user is in.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::handlers::Session;
use super::Gateway;
use crate::delivery::hub::presence_status;
use crate::ids::GroupId;
use crate::protocol::{
    json_len, ConversationSummary, ConversationView, MessageView, PresenceView, ProtocolError,
    RequestId, ServerFrame, SyncEntry, REPLY_BYTES_MAX,
};
use crate::shard::command::*;

/// Messages per conversation in one `sync` reply (fewer when the byte budget runs out).
pub(crate) const SYNC_PAGE_MAX: u64 = 100;
/// Index entries (the user's conversations) covered by one `sync` reply; the conversations
/// named in the request come on top, at most `SYNC_CONVERSATIONS_MAX`. Both bound the
/// entries' own bytes (≈ 230 each) to a third of the budget, so messages always fit.
pub(crate) const SYNC_PAGE_CONVERSATIONS_MAX: u32 = 500;
/// Index entries read per step by `list_conversations` and `subscribe_presence`.
pub(crate) const INDEX_PAGE_MAX: u32 = 200;
/// Index entries one `list_conversations` reply walks at most (entries of conversations the
/// user left are skipped but cost a read); past it the reply ends with `has_more`.
pub(crate) const LIST_INDEX_ENTRIES_PER_REPLY_MAX: usize = 2_000;

type Reply = Result<Vec<ServerFrame>, ProtocolError>;

/// Conversations with the user's receipt watermarks, as the shards return them.
type Membership = (GroupId, ConversationState, (u64, u64));

impl Gateway {
    /// The conversations of `ids` that `user` is a member of, in the order of `ids`
    /// (linearizable; one read per shard and chunk).
    async fn member_conversations(
        &self,
        user: &str,
        ids: &[ConversationId],
    ) -> Result<Vec<Membership>, ProtocolError> {
        let mut by_group: BTreeMap<GroupId, Vec<ConversationId>> = BTreeMap::new();
        for id in ids {
            by_group
                .entry(self.shard_map.shard_for_conversation(id))
                .or_default()
                .push(id.clone());
        }
        let mut found: HashMap<ConversationId, Membership> = HashMap::new();
        for (group, ids) in by_group {
            for chunk in ids.chunks(crate::shard::query::CONVERSATIONS_PER_QUERY_MAX) {
                for (c, receipt) in self
                    .read_conversations(group, chunk.to_vec(), user)
                    .await?
                    .into_iter()
                    .flatten()
                {
                    if c.members.iter().any(|m| m.user_id == user) {
                        found.insert(c.conversation_id.clone(), (group, c, receipt));
                    }
                }
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// `subscribe_presence`: the allowed users (sharing a conversation with the subscriber,
    /// found by walking the subscriber's index page by page) answered in ONE `presence`
    /// frame; the other users' statuses follow as id-less `presence` frames, so that a v1
    /// client that read one frame per user still learns every status.
    pub(crate) async fn subscribe_presence(
        &self,
        s: &Session,
        id: Option<RequestId>,
        user_ids: Vec<String>,
    ) -> Reply {
        let wanted: HashSet<&str> = user_ids.iter().map(String::as_str).collect();
        let mut shared: HashSet<String> = HashSet::new();
        let mut after: Option<String> = None;
        while shared.len() < wanted.len() {
            let (ids, more) = self
                .read_user_conversations_page(&s.user_id, after.as_deref(), INDEX_PAGE_MAX)
                .await?;
            for (_, c, _) in self.member_conversations(&s.user_id, &ids).await? {
                shared.extend(
                    c.members
                        .into_iter()
                        .map(|m| m.user_id)
                        .filter(|u| wanted.contains(u.as_str())),
                );
            }
            match (more, ids.last()) {
                (true, Some(last)) => after = Some(last.clone()),
                _ => break,
            }
        }
        let allowed: Vec<String> = user_ids
            .into_iter()
            .filter(|u| shared.contains(u))
            .collect();
        let status = self
            .hub
            .subscribe_presence(&s.user_id, s.conn_id, &s.tx, &allowed);
        let views: Vec<PresenceView> = status
            .into_iter()
            .map(|(user_id, online, last_seen)| PresenceView {
                user_id,
                status: presence_status(online),
                last_seen,
            })
            .collect();
        let Some(first) = views.first().cloned() else {
            // Nothing to report: still answer, so a client waiting on the id is not stuck.
            return Ok(vec![ServerFrame::Ok { id }]);
        };
        let mut frames = Vec::with_capacity(views.len());
        for v in views.iter().skip(1) {
            frames.push(ServerFrame::Presence {
                id: None,
                user_id: v.user_id.clone(),
                status: v.status,
                last_seen: v.last_seen,
                presences: None,
            });
        }
        frames.insert(
            0,
            ServerFrame::Presence {
                id,
                user_id: first.user_id,
                status: first.status,
                last_seen: first.last_seen,
                presences: Some(views),
            },
        );
        Ok(frames)
    }

    /// `history`: one page, newest first, cut to the byte budget (`has_more` then true).
    pub(crate) async fn history(
        &self,
        s: &Session,
        id: Option<RequestId>,
        conversation_id: String,
        before_seq: Option<u64>,
        limit: u64,
    ) -> Reply {
        let (group, conv) = self
            .member_conversation(&s.user_id, &conversation_id)
            .await?;
        let page = self.read_history(group, &conv, before_seq, limit).await?;
        let mut frame = ServerFrame::History {
            id,
            conversation_id,
            messages: Vec::new(),
            // `false` is the longer word: the estimate is an upper bound.
            has_more: false,
        };
        let mut total = json_len(&frame);
        let mut cut = false;
        let mut messages = Vec::with_capacity(page.messages.len());
        for m in &page.messages {
            let view = MessageView::from(m);
            let n = json_len(&view) + 1;
            if total + n > REPLY_BYTES_MAX {
                cut = true;
                break;
            }
            total += n;
            messages.push(view);
        }
        if let ServerFrame::History {
            messages: ms,
            has_more,
            ..
        } = &mut frame
        {
            *ms = messages;
            *has_more = page.has_more || cut;
        }
        Ok(vec![frame])
    }

    /// `sync`: one page of the user's conversations (index order, after `cursor`) plus the
    /// conversations named in the request whose index position falls in that page, each
    /// with the messages after the requested seq (ascending, gapless, at most 100) until the
    /// reply's byte budget is spent; entries past the budget come without messages and with
    /// `has_more` (G8: a client syncs again from the last seq it holds).
    pub(crate) async fn sync(
        &self,
        s: &Session,
        id: Option<RequestId>,
        asked: BTreeMap<String, u64>,
        cursor: Option<String>,
    ) -> Reply {
        let user = s.user_id.as_str();
        let (ids, more) = self
            .read_user_conversations_page(user, cursor.as_deref(), SYNC_PAGE_CONVERSATIONS_MAX)
            .await?;
        let next_cursor = if more { ids.last().cloned() } else { None };
        // The page covers the index positions (cursor, next_cursor]; a named conversation
        // is answered by the page whose range holds its position (so exactly once over a
        // walk), whether or not the index has it yet (outbox not delivered): membership on
        // its own shard is the truth.
        let range = IndexRange::new(user, cursor.as_deref(), next_cursor.as_deref());
        let page_ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut wanted = ids.clone();
        wanted.extend(
            asked
                .keys()
                .filter(|c| !page_ids.contains(c.as_str()) && range.holds(c))
                .cloned(),
        );
        let mine = self.member_conversations(user, &wanted).await?;
        let forbidden = forbidden_entries(&asked, &range, &mine);

        let mut frame = ServerFrame::Sync {
            id,
            conversations: Vec::new(),
            has_more: next_cursor.as_ref().map(|_| true),
            cursor: next_cursor.clone(),
        };
        // Every entry's own bytes are reserved first, so that messages never crowd out an
        // entry: the reply always lists the whole page.
        let mut total = json_len(&frame) + forbidden.iter().map(|e| json_len(e) + 1).sum::<usize>();
        total += mine
            .iter()
            .map(|(_, c, _)| json_len(&sync_skeleton(c)) + 1)
            .sum::<usize>();
        let mut out = self.sync_entries(&mine, &asked, total).await?;
        out.extend(forbidden);
        if let ServerFrame::Sync { conversations, .. } = &mut frame {
            *conversations = out;
        }
        Ok(vec![frame])
    }

    /// The sync entries of `mine`, each with the messages after the seq `asked` names for it
    /// (0 if none) while the reply's byte budget lasts (`total` bytes of it are spent
    /// already); the entries past the budget come without messages.
    async fn sync_entries(
        &self,
        mine: &[Membership],
        asked: &BTreeMap<String, u64>,
        mut total: usize,
    ) -> Result<Vec<SyncEntry>, ProtocolError> {
        let mut spent = total > REPLY_BYTES_MAX;
        let mut out = Vec::with_capacity(mine.len());
        for (group, conv, _) in mine {
            let after = asked.get(&conv.conversation_id).copied().unwrap_or(0);
            let mut entry = sync_skeleton(conv);
            entry.has_more = Some(after < conv.last_seq);
            if !spent && after < conv.last_seq {
                let page = self.read_after(*group, conv, after, SYNC_PAGE_MAX).await?;
                let (messages, cut) = fit_messages(&page.messages, &mut total);
                spent = cut;
                entry.has_more = Some(page.has_more || cut);
                entry.messages = Some(messages);
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// `list_conversations`: the user's conversations in index order after `cursor`, as many
    /// as fit the byte budget; `has_more` and `cursor` when more follow.
    pub(crate) async fn list_conversations(
        &self,
        s: &Session,
        id: Option<RequestId>,
        cursor: Option<String>,
    ) -> Reply {
        let user = s.user_id.as_str();
        // The frame's own bytes with the longest cursor it may carry.
        let mut total = json_len(&ServerFrame::Conversations {
            id: id.clone(),
            conversations: Vec::new(),
            has_more: Some(true),
            cursor: Some("x".repeat(crate::protocol::ID_CHARS_MAX)),
        });
        let mut out = Vec::new();
        let mut after = cursor;
        let mut walked = 0usize;
        let next = 'walk: loop {
            let (ids, more) = self
                .read_user_conversations_page(user, after.as_deref(), INDEX_PAGE_MAX)
                .await?;
            walked += ids.len();
            let mine = self.member_conversations(user, &ids).await?;
            let mut mine = mine.into_iter().peekable();
            for index_id in &ids {
                if mine
                    .peek()
                    .is_some_and(|(_, c, _)| c.conversation_id == *index_id)
                {
                    let Some((_, conv, (_, read_seq))) = mine.next() else {
                        break;
                    };
                    let view = ConversationView::from(&conv);
                    let summary = ConversationSummary {
                        conversation_id: view.conversation_id,
                        kind: view.kind,
                        title: view.title,
                        last_seq: conv.last_seq,
                        read_seq,
                        unread: conv.last_seq.saturating_sub(read_seq),
                        members: view.members,
                    };
                    let n = json_len(&summary) + 1;
                    if total + n > REPLY_BYTES_MAX {
                        // Continue at this entry next time.
                        break 'walk Some(after);
                    }
                    total += n;
                    out.push(summary);
                }
                after = Some(index_id.clone());
            }
            if !more || ids.is_empty() {
                break None;
            }
            if walked >= LIST_INDEX_ENTRIES_PER_REPLY_MAX {
                break Some(after);
            }
        };
        let (has_more, cursor) = match next {
            Some(c) => (Some(true), c),
            None => (None, None),
        };
        Ok(vec![ServerFrame::Conversations {
            id,
            conversations: out,
            has_more,
            cursor,
        }])
    }
}

/// The index positions `(after, up_to]` of one `sync` page (`None`: unbounded on that
/// side), as keys of the user's conversation index.
struct IndexRange<'a> {
    user: &'a str,
    lo: Option<Vec<u8>>,
    hi: Option<Vec<u8>>,
}

impl<'a> IndexRange<'a> {
    fn new(user: &'a str, after: Option<&str>, up_to: Option<&str>) -> Self {
        let key = |c: &str| crate::shard::keys::user_conversation(user, c);
        IndexRange {
            user,
            lo: after.map(key),
            hi: up_to.map(key),
        }
    }

    /// Whether conversation `c`'s position in the user's index falls in the range.
    fn holds(&self, c: &str) -> bool {
        let k = crate::shard::keys::user_conversation(self.user, c);
        self.lo.as_ref().is_none_or(|lo| k > *lo) && self.hi.as_ref().is_none_or(|hi| k <= *hi)
    }
}

/// A `forbidden` entry for each conversation named in `asked` whose position is in `range`
/// but that the user is not a member of (`mine`).
fn forbidden_entries(
    asked: &BTreeMap<String, u64>,
    range: &IndexRange<'_>,
    mine: &[Membership],
) -> Vec<SyncEntry> {
    let member_ids: HashSet<String> = mine
        .iter()
        .map(|(_, c, _)| c.conversation_id.clone())
        .collect();
    asked
        .keys()
        .filter(|c| range.holds(c) && !member_ids.contains(*c))
        .map(|c| SyncEntry {
            conversation_id: c.clone(),
            last_seq: None,
            messages: None,
            has_more: None,
            error: Some("forbidden"),
        })
        .collect()
}

/// A member's sync entry of `conv` before its messages are added.
fn sync_skeleton(conv: &ConversationState) -> SyncEntry {
    SyncEntry {
        conversation_id: conv.conversation_id.clone(),
        last_seq: Some(conv.last_seq),
        messages: Some(Vec::new()),
        has_more: Some(false),
        error: None,
    }
}

/// The views of `messages`, in order, as long as they fit the reply's byte budget, their
/// bytes added to `total`; `true` when the rest were cut.
fn fit_messages(messages: &[Message], total: &mut usize) -> (Vec<MessageView>, bool) {
    let mut views = Vec::with_capacity(messages.len());
    for m in messages {
        let view = MessageView::from(m);
        let n = json_len(&view) + 1;
        if *total + n > REPLY_BYTES_MAX {
            return (views, true);
        }
        *total += n;
        views.push(view);
    }
    (views, false)
}
