//! The strategies and their rules, as one table ([`TABLE`]): for each strategy its
//! spelling, family, the options it takes, the ones it requires, the ones with a default,
//! what it does with `#[tx]` and `#[fence]`, and how many key parts it can use.
//!
//! Validation reads the table; a new strategy is one more row here (and its expansion).

use crate::parse::OptionName;

/// One of the eight idempotency strategies (README: "What works now").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Strategy {
    /// `strategy = "select_before_insert"`
    SelectBeforeInsert,
    /// `strategy = "pessimistic"`
    Pessimistic,
    /// `strategy = "optimistic"`
    Optimistic,
    /// `strategy = "unique_index"`
    UniqueIndex,
    /// `strategy = "dedup_table"`
    DedupTable,
    /// `strategy = "state_machine"`
    StateMachine,
    /// `strategy = "distributed_lock"`
    DistributedLock,
    /// `strategy = "token"`
    Token,
}

/// The two ways a strategy makes a duplicate harmless.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FamilyKind {
    /// A record of the call replays its response (`dedup_table`, `distributed_lock`, `token`).
    Replaying,
    /// The business table's own row decides, in the body's transaction.
    Business,
}

/// What a strategy does with a `#[tx]` parameter.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TxRule {
    /// No transaction to inject: `#[tx]` is an error.
    Forbidden,
    /// With `#[tx]` the claim lives in the body's transaction, without it it is committed first.
    Optional,
    /// The body always runs in the strategy's transaction: `#[tx]` is required.
    Required,
}

/// An option a strategy cannot run without.
pub(crate) struct Required {
    /// The option.
    pub(crate) option: OptionName,
    /// What the message adds after `add <option> = "..."`.
    pub(crate) hint: &'static str,
}

/// A limit on the number of key parts.
pub(crate) struct KeyLimit {
    /// The most parts the strategy uses.
    pub(crate) max: usize,
    /// The error at the first part too many (`{strategy}` is replaced by its name).
    pub(crate) message: &'static str,
}

/// Everything validation needs to know about one strategy.
pub(crate) struct Rules {
    /// The strategy.
    pub(crate) strategy: Strategy,
    /// Its spelling in the attribute.
    pub(crate) name: &'static str,
    /// Its family.
    pub(crate) family: FamilyKind,
    /// The options it takes besides [`COMMON`].
    pub(crate) options: &'static [OptionName],
    /// The options it needs and has no default for.
    pub(crate) required: &'static [Required],
    /// A set of options of which at least one must be given, and the message when none is.
    pub(crate) one_of: Option<(&'static [OptionName], &'static str)>,
    /// The options whose default is derived from the key (`column`, `version`).
    pub(crate) defaults: &'static [OptionName],
    /// What it does with `#[tx]`.
    pub(crate) tx: TxRule,
    /// What the transaction the body runs in has done or holds when the body starts ("holds
    /// the key's row lock"), for the error at a `#[tx]` parameter the body never uses (empty
    /// where `#[tx]` is forbidden).
    pub(crate) tx_holds: &'static str,
    /// Whether it issues a fencing token for `#[fence]`.
    pub(crate) fence: bool,
    /// How many key parts it can use, if limited.
    pub(crate) key_limit: Option<KeyLimit>,
}

/// Options every strategy takes.
pub(crate) const COMMON: &[OptionName] = &[
    OptionName::Strategy,
    OptionName::Key,
    OptionName::Store,
    OptionName::Crate,
];

/// Options of the replaying strategies' record: its name, scope and fingerprint.
const RECORD: [OptionName; 3] = [OptionName::Scope, OptionName::Name, OptionName::Fingerprint];

/// `table` is required by every business-table strategy but `unique_index`.
const TABLE_REQUIRED: Required = Required {
    option: OptionName::Table,
    hint: "naming the business table the key lives in",
};

/// What the business-table strategies say about a key of too many parts (the runtime's
/// `KeyValues` tuples go up to four).
const BUSINESS_KEY_LIMIT: KeyLimit = KeyLimit {
    max: 4,
    message: "strategy `{strategy}` compares at most 4 key parts with their columns; this is part 5",
};

/// The hint of every `state_machine` requirement.
const TRANSITION_HINT: &str =
    "(e.g. status_column = \"status\", from = \"PAID\", to = \"SHIPPED\")";

/// The rules of every strategy, in the documentation's order.
pub(crate) const TABLE: &[Rules] = &[
    Rules {
        strategy: Strategy::SelectBeforeInsert,
        name: "select_before_insert",
        family: FamilyKind::Business,
        options: &[
            OptionName::Table,
            OptionName::Column,
            OptionName::OnDuplicate,
        ],
        required: &[TABLE_REQUIRED],
        one_of: None,
        defaults: &[OptionName::Column],
        tx: TxRule::Required,
        tx_holds: "has just found no row for the key",
        fence: false,
        key_limit: Some(BUSINESS_KEY_LIMIT),
    },
    Rules {
        strategy: Strategy::Pessimistic,
        name: "pessimistic",
        family: FamilyKind::Business,
        options: &[OptionName::Table, OptionName::Column],
        required: &[TABLE_REQUIRED],
        one_of: None,
        defaults: &[OptionName::Column],
        tx: TxRule::Required,
        tx_holds: "holds the key's row lock (`SELECT … FOR UPDATE`; on SQLite the database's write lock)",
        fence: false,
        key_limit: Some(BUSINESS_KEY_LIMIT),
    },
    Rules {
        strategy: Strategy::Optimistic,
        name: "optimistic",
        family: FamilyKind::Business,
        options: &[
            OptionName::Table,
            OptionName::Column,
            OptionName::Version,
            OptionName::OnDuplicate,
        ],
        required: &[TABLE_REQUIRED],
        one_of: None,
        defaults: &[OptionName::Column, OptionName::Version],
        tx: TxRule::Required,
        tx_holds: "has bumped the key's version and holds its row lock (on SQLite the database's write lock)",
        fence: false,
        key_limit: Some(BUSINESS_KEY_LIMIT),
    },
    Rules {
        strategy: Strategy::UniqueIndex,
        name: "unique_index",
        family: FamilyKind::Business,
        options: &[
            OptionName::Table,
            OptionName::Column,
            OptionName::Constraint,
            OptionName::OnDuplicate,
        ],
        required: &[],
        one_of: Some((
            &[OptionName::Constraint, OptionName::Table],
            "strategy `unique_index` needs `constraint` (the unique index on the key, e.g. constraint = \"orders_code_key\") or `table` (to confirm the key's row exists), or both: otherwise any unique violation would count as a duplicate; on MySQL/MariaDB and SQLite, which do not name the violated constraint, `table` is needed",
        )),
        defaults: &[],
        tx: TxRule::Required,
        tx_holds: "counts a unique violation of the body's insert on the key as the duplicate",
        fence: false,
        key_limit: Some(BUSINESS_KEY_LIMIT),
    },
    Rules {
        strategy: Strategy::DedupTable,
        name: "dedup_table",
        family: FamilyKind::Replaying,
        options: &[
            RECORD[0],
            RECORD[1],
            RECORD[2],
            OptionName::Lease,
            OptionName::Ttl,
            OptionName::OnBusy,
            OptionName::OnCancel,
            OptionName::Terminal,
        ],
        required: &[],
        one_of: None,
        defaults: &[],
        tx: TxRule::Optional,
        tx_holds: "has inserted the idempotency record and holds its key's lock (on SQLite the database's write lock)",
        fence: false,
        key_limit: None,
    },
    Rules {
        strategy: Strategy::StateMachine,
        name: "state_machine",
        family: FamilyKind::Business,
        options: &[
            OptionName::Table,
            OptionName::Column,
            OptionName::StatusColumn,
            OptionName::From,
            OptionName::To,
            OptionName::Done,
            OptionName::OnDuplicate,
        ],
        required: &[
            TABLE_REQUIRED,
            Required {
                option: OptionName::StatusColumn,
                hint: TRANSITION_HINT,
            },
            Required {
                option: OptionName::From,
                hint: TRANSITION_HINT,
            },
            Required {
                option: OptionName::To,
                hint: TRANSITION_HINT,
            },
        ],
        one_of: None,
        defaults: &[OptionName::Column],
        tx: TxRule::Required,
        tx_holds: "has moved the key's row to the new state and holds its row lock (on SQLite the database's write lock)",
        fence: false,
        key_limit: Some(BUSINESS_KEY_LIMIT),
    },
    Rules {
        strategy: Strategy::DistributedLock,
        name: "distributed_lock",
        family: FamilyKind::Replaying,
        options: &[
            RECORD[0],
            RECORD[1],
            RECORD[2],
            OptionName::Lease,
            OptionName::Ttl,
            OptionName::OnBusy,
            OptionName::OnCancel,
            OptionName::Terminal,
        ],
        required: &[],
        one_of: None,
        defaults: &[],
        tx: TxRule::Forbidden,
        tx_holds: "",
        fence: true,
        key_limit: None,
    },
    Rules {
        strategy: Strategy::Token,
        name: "token",
        family: FamilyKind::Replaying,
        options: &[
            RECORD[0],
            RECORD[1],
            RECORD[2],
            OptionName::Lease,
            OptionName::Ttl,
            OptionName::OnCancel,
            OptionName::Terminal,
        ],
        required: &[],
        one_of: None,
        defaults: &[],
        tx: TxRule::Forbidden,
        tx_holds: "",
        fence: false,
        key_limit: Some(KeyLimit {
            max: 1,
            message: "strategy `token` takes one key part, the token: write key = \"req.token\" (the value from `issue_token`)",
        }),
    },
];

impl Strategy {
    /// The strategy's rules.
    pub(crate) fn rules(self) -> &'static Rules {
        // Every strategy has a row: `table_has_every_strategy_once` checks it.
        TABLE
            .iter()
            .find(|rules| rules.strategy == self)
            .unwrap_or(&TABLE[0])
    }

    /// The strategy as written in the attribute.
    pub(crate) fn as_str(self) -> &'static str {
        self.rules().name
    }

    /// The strategy spelled `text`, if there is one.
    pub(crate) fn from_name(text: &str) -> Option<Strategy> {
        TABLE
            .iter()
            .find(|rules| rules.name == text)
            .map(|rules| rules.strategy)
    }

    /// Every strategy's name, in order.
    pub(crate) fn names() -> Vec<&'static str> {
        TABLE.iter().map(|rules| rules.name).collect()
    }

    /// The names of the strategies for which `filter` holds, comma-separated.
    pub(crate) fn list_where(filter: impl Fn(&Rules) -> bool) -> String {
        TABLE
            .iter()
            .filter(|rules| filter(rules))
            .map(|rules| rules.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether option `option` means anything to this strategy.
    pub(crate) fn accepts(self, option: OptionName) -> bool {
        COMMON.contains(&option) || self.rules().options.contains(&option)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_strategy_once() {
        use Strategy as S;
        for strategy in [
            S::SelectBeforeInsert,
            S::Pessimistic,
            S::Optimistic,
            S::UniqueIndex,
            S::DedupTable,
            S::StateMachine,
            S::DistributedLock,
            S::Token,
        ] {
            let rows = TABLE.iter().filter(|r| r.strategy == strategy).count();
            assert_eq!(rows, 1, "{strategy:?}");
            assert_eq!(Strategy::from_name(strategy.as_str()), Some(strategy));
        }
    }

    #[test]
    fn rules_are_consistent() {
        for rules in TABLE {
            for required in rules.required {
                assert!(rules.options.contains(&required.option), "{}", rules.name);
            }
            for option in rules.defaults {
                assert!(rules.options.contains(option), "{}", rules.name);
            }
            let business = rules.family == FamilyKind::Business;
            assert_eq!(business, rules.tx == TxRule::Required, "{}", rules.name);
            assert_eq!(
                business,
                !RECORD.iter().any(|o| rules.options.contains(o)),
                "{}",
                rules.name
            );
        }
    }
}
